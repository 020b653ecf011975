//! The CLI client against a live server, and tokens on the wire.

use super::*;

/// The CLI client against a real server: upload, submit --wait, logs --follow, status, replay,
/// cancel, and one readable line for each kind of failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_client_against_a_live_server() {
    use std::process::Command;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("cli.db").display().to_string();
    let server = Process::serve(dir.path(), &db, &["--workers", "2"]);
    let cli = |args: &[&str]| {
        Command::new(wasmjobs_tests::wasmjobs_bin())
            .args(args)
            .env("WASMJOBS_SERVER", &server.url)
            .output()
            .expect("run the CLI")
    };
    let out = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let o = cli(&["module", "upload", guests::WORDFREQ, "--name", "wordfreq"]);
    assert!(
        o.status.success() && out(&o).starts_with("sha256:"),
        "{}",
        err(&o)
    );
    let o = cli(&["module", "upload", guests::TESTJOB, "--name", "testjob"]);
    assert!(o.status.success(), "{}", err(&o));
    let o = cli(&["module", "list"]);
    assert!(
        out(&o).contains("wordfreq") && out(&o).contains("testjob"),
        "{}",
        out(&o)
    );
    // A table for people, with a header; JSON for scripts, with the output flag anywhere on
    // the line (short or long); --server anywhere on the line.
    assert!(out(&o).starts_with("NAME"), "{}", out(&o));
    for args in [
        &["-o", "json", "module", "list"][..],
        &["--output", "json", "module", "list"],
        &["--output", "table", "module", "list", "-o", "json"],
        &["module", "-o", "json", "list"],
        &["module", "list", "--output", "json"],
        &["module", "--output=json", "list"],
        &["module", "list", "--json"],
    ] {
        let o = cli(args);
        let v: Value = serde_json::from_str(out(&o).trim())
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", out(&o)));
        assert!(
            v["modules"].as_array().is_some_and(|m| m.len() == 2),
            "{args:?}: {v}"
        );
    }
    let o = cli(&[
        "--server",
        "http://127.0.0.1:9",
        "module",
        "list",
        "--server",
        &server.url,
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "the last --server wins: {}",
        err(&o)
    );
    let o = cli(&["module", "list", "-o", "yaml"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    // Before a verb that prints no table, `-o` is refused by name (`compile -o` is a file).
    let o = cli(&["-o", "json", "compile", guests::TESTJOB]);
    assert!(
        o.status.code() == Some(2) && err(&o).contains("`--output` applies to"),
        "{}",
        err(&o)
    );

    // Workflow definitions: create from YAML, list, draw; a bad one is one line naming it.
    let wf = dir.path().join("wf.yaml");
    std::fs::write(
        &wf,
        "name: pair\nnodes:\n  - name: first\n    module: testjob\n  - name: count\n    module: wordfreq\n    needs: [first]\n",
    )
    .expect("write workflow");
    let o = cli(&["workflow", "create", wf.to_str().expect("utf-8")]);
    assert_eq!(
        (o.status.code(), out(&o).trim()),
        (Some(0), "pair version 1"),
        "{}",
        err(&o)
    );
    let o = cli(&["workflow", "list"]);
    assert!(
        out(&o).contains("pair") && out(&o).contains("2 nodes"),
        "{}",
        out(&o)
    );
    let o = cli(&["workflow", "graph", "pair"]);
    assert!(out(&o).contains("first --> count"), "{}", out(&o));
    let o = cli(&["workflow", "graph", "pair@1", "--dot"]);
    assert!(out(&o).contains("\"first\" -> \"count\";"), "{}", out(&o));
    std::fs::write(
        &wf,
        "name: loop\nnodes:\n  - {name: a, module: testjob, needs: [a]}\n",
    )
    .expect("write workflow");
    let o = cli(&["workflow", "create", wf.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(7), "refused has its own code");
    assert!(err(&o).contains("cycle: a → a"), "{}", err(&o));
    assert_eq!(err(&o).lines().count(), 1, "{}", err(&o));

    // Workflow runs: followed live to the output, a failing one, status, cancel.
    let o = cli(&["module", "upload", guests::FLOW, "--name", "flow"]);
    assert!(o.status.success(), "{}", err(&o));
    std::fs::write(
        &wf,
        "name: steps\nnodes:\n  - {name: a, module: flow}\n  - {name: b, module: flow, needs: [a]}\n",
    )
    .expect("write workflow");
    let o = cli(&["workflow", "create", wf.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", err(&o));
    let o = cli(&[
        "workflow",
        "run",
        "steps",
        "--input",
        r#"{"n": 0}"#,
        "--follow",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o).trim(), r#"{"n":2}"#);
    for line in [
        "a: running",
        "a: succeeded",
        "b: succeeded",
        "[a info] step 1",
        "✓ b",
    ] {
        assert!(err(&o).contains(line), "missing {line:?} in:\n{}", err(&o));
    }
    assert!(
        err(&o).find("a: succeeded") < err(&o).find("b: running"),
        "{}",
        err(&o)
    );
    let o = cli(&[
        "workflow",
        "run",
        "steps",
        "--input",
        r#"{"n": 0, "fail_at": 2}"#,
        "--follow",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(err(&o).contains("b: failed"), "{}", err(&o));
    assert!(err(&o).contains("step 2 fails on purpose"), "{}", err(&o));
    let o = cli(&[
        "workflow",
        "run",
        "steps",
        "--input",
        r#"{"n": 0, "sleep_ms": 20000}"#,
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let run = out(&o).trim().to_string();
    assert!(run.parse::<i64>().is_ok(), "{run}");
    let o = cli(&["workflow", "status", &run]);
    assert!(out(&o).contains("steps v1"), "{}", out(&o));
    let o = cli(&["workflow", "cancel", &run]);
    assert!(o.status.success(), "{}", err(&o));
    let o = cli(&["workflow", "status", &run, "--follow"]);
    assert_eq!(o.status.code(), Some(15), "{}", err(&o));
    assert!(err(&o).contains("cancelled"), "{}", err(&o));
    let o = cli(&["workflow", "status", "abc"]);
    assert!(
        err(&o).contains("invalid workflow run id \"abc\""),
        "{}",
        err(&o)
    );
    let o = cli(&["workflow", "run", "ghost"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(err(&o).contains("ghost"), "{}", err(&o));

    let o = cli(&[
        "job",
        "submit",
        "wordfreq",
        "--input",
        r#"{"text": "x y x"}"#,
        "--wait",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let v: Value = serde_json::from_str(out(&o).trim()).expect("output is JSON");
    assert_eq!(v["words"], 3);

    // The input from stdin (`@-`), and limits in the grammar `run` takes.
    let mut child = Command::new(wasmjobs_tests::wasmjobs_bin())
        .args(["job", "submit", "wordfreq", "--input", "@-", "--wait"])
        .env("WASMJOBS_SERVER", &server.url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("stdin"),
        br#"{"text": "p q p q r"}"#,
    )
    .expect("write stdin");
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let v: Value = serde_json::from_str(out(&o).trim()).expect("output is JSON");
    assert_eq!(v["words"], 5);
    let o = cli(&[
        "job",
        "submit",
        "testjob",
        "--input",
        r#"{"mode":"spin"}"#,
        "--fuel",
        "1e7",
        "--timeout",
        "20s",
        "--memory",
        "64MiB",
        "--max-attempts",
        "1",
        "--wait",
    ]);
    assert_eq!(o.status.code(), Some(11), "out of fuel: {}", err(&o));

    let o = cli(&[
        "job",
        "submit",
        "testjob",
        "--input",
        r#"{"mode":"logflood","lines":3}"#,
        "--follow",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(err(&o).contains("[info report] 2 "), "{}", err(&o));
    assert!(err(&o).contains("-- succeeded"), "{}", err(&o));

    let o = cli(&[
        "job",
        "submit",
        "testjob",
        "--input",
        r#"{"mode":"panic"}"#,
        "--max-attempts",
        "1",
        "--wait",
    ]);
    assert_eq!(
        o.status.code(),
        Some(10),
        "trapped has its exit code: {}",
        err(&o)
    );
    let o = cli(&["job", "list", "--state", "failed", "--json"]);
    let list: Value = serde_json::from_str(out(&o).trim()).expect("list JSON");
    let failed_id = list["jobs"][0]["id"]
        .as_i64()
        .expect("a failed job")
        .to_string();
    let o = cli(&["job", "status", &failed_id]);
    assert!(
        out(&o).contains("trapped") && out(&o).contains("boom on purpose"),
        "{}",
        out(&o)
    );
    let o = cli(&["job", "logs", &failed_id]);
    assert!(err(&o).contains("boom on purpose"), "{}", err(&o));
    let o = cli(&["job", "replay", &failed_id]);
    assert_eq!(o.status.code(), Some(10), "{}", err(&o));
    assert!(
        err(&o).contains("reproduced — recorded trapped, now trapped"),
        "{}",
        err(&o)
    );

    let o = cli(&[
        "job",
        "submit",
        "testjob",
        "--input",
        r#"{"mode":"sleep","ms":60000}"#,
    ]);
    let id = out(&o).trim().to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let o = cli(&["job", "cancel", &id]);
    assert!(o.status.success(), "{}", err(&o));
    let o = cli(&["job", "logs", &id, "--follow"]);
    assert_eq!(o.status.code(), Some(15), "cancelled: {}", err(&o));

    let o = cli(&["job", "status", "987654"]);
    assert_eq!(o.status.code(), Some(6), "not found has its own code");
    assert_eq!(err(&o).trim(), "error: job 987654 not found (HTTP 404)");
    let o = cli(&["job", "status", "abc"]);
    assert_eq!(
        err(&o).trim(),
        "error: invalid job id \"abc\": expected a positive integer"
    );
    let o = Command::new(wasmjobs_tests::wasmjobs_bin())
        .args(["job", "list", "--server", "http://127.0.0.1:9"])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(4), "unreachable has its own code");
    assert!(
        err(&o).starts_with("error: cannot reach the wasmjobs server at http://127.0.0.1:9"),
        "{}",
        err(&o)
    );
    assert_eq!(
        err(&o).lines().count(),
        1,
        "one line, no backtrace: {}",
        err(&o)
    );
}

/// A server with tokens refuses a bad token in one line, and refuses to listen on a public
/// address without tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_on_the_wire_and_no_public_bind_without_them() {
    use std::process::Command;
    let dir = tempfile::tempdir().expect("tempdir");
    let sha =
        wasmjobs::http::Token::from_secret("t", "s3cret", wasmjobs::http::Scope::Admin).sha256;
    std::fs::write(
        dir.path().join("wasmjobs.toml"),
        format!("[[tokens]]\nname = \"t\"\nsha256 = \"{sha}\"\nscope = \"admin\"\n"),
    )
    .expect("config");
    let db = dir.path().join("t.db").display().to_string();
    let server = Process::serve(dir.path(), &db, &[]);
    let run = |token: &str| {
        Command::new(wasmjobs_tests::wasmjobs_bin())
            .args(["job", "list", "--server", &server.url, "--token", token])
            .output()
            .expect("run")
    };
    let o = run("wrong");
    assert_eq!(o.status.code(), Some(5), "unauthorised has its own code");
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        "error: unknown bearer token (HTTP 401)"
    );
    assert!(run("s3cret").status.success());

    let other = tempfile::tempdir().expect("tempdir");
    let o = Command::new(wasmjobs_tests::wasmjobs_bin())
        .args([
            "serve",
            "--db",
            &other.path().join("x.db").display().to_string(),
            "--addr",
            "0.0.0.0:0",
        ])
        .current_dir(other.path())
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("refusing to listen on 0.0.0.0:0 without API tokens")
    );
}

/// Tokens made by command: `token create` prints the secret once and writes only its hash
/// (keeping the file's comments); `list` shows them; a server started on the file takes each
/// with its scope's limits — read may only read, submit may not manage schedules, admin may —
/// and `revoke` removes one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_made_by_command_and_the_limits_of_each_scope() {
    use std::process::Command;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("wasmjobs.toml");
    std::fs::write(&config, "# my settings\nretention = \"1d\"\n").expect("config");
    let wj = |args: &[&str]| {
        Command::new(wasmjobs_tests::wasmjobs_bin())
            .args(args)
            .current_dir(dir.path())
            .env_remove("WASMJOBS_CONFIG")
            .output()
            .expect("run")
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    let mut secrets = HashMap::new();
    for (name, scope) in [("reader", "read"), ("ci", "submit"), ("ops", "admin")] {
        let o = wj(&["token", "create", name, "--scope", scope]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let secret = text(&o.stdout);
        assert!(secret.starts_with("wj_") && secret.len() == 67, "{secret}");
        secrets.insert(name, secret);
    }
    let file = std::fs::read_to_string(&config).expect("read config");
    assert!(
        file.starts_with("# my settings\nretention = \"1d\""),
        "{file}"
    );
    for secret in secrets.values() {
        assert!(
            !file.contains(secret.as_str()),
            "a secret was written: {file}"
        );
    }
    let o = wj(&["token", "create", "ci", "--scope", "read"]);
    assert_ne!(o.status.code(), Some(0), "a second token named ci");
    assert!(
        text(&o.stderr).contains("already has a token named \"ci\""),
        "{}",
        text(&o.stderr)
    );
    let o = wj(&["token", "create", "x", "--scope", "root"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let listed = text(&wj(&["token", "list"]).stdout);
    assert!(
        listed.contains("reader") && listed.contains("ci") && listed.contains("admin"),
        "{listed}"
    );

    let db = dir.path().join("t.db").display().to_string();
    let server = Process::serve(dir.path(), &db, &["--workers", "1"]);
    let as_token = |name: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", &server.url, "--token", &secrets[name]]);
        let o = wj(&all);
        (o.status.code(), text(&o.stderr))
    };
    let upload = ["module", "upload", guests::NOOP, "--name", "noop"];
    let schedule = ["schedule", "add", "0 0 * * *", "noop", "--name", "nightly"];
    assert_eq!(as_token("reader", &["job", "list"]).0, Some(0));
    let (code, err) = as_token("reader", &upload);
    assert_eq!(code, Some(5), "read may not upload: {err}");
    assert!(err.contains("scope submit"), "{err}");
    assert_eq!(as_token("ci", &upload).0, Some(0));
    let (code, err) = as_token("ci", &schedule);
    assert_eq!(code, Some(5), "submit may not manage schedules: {err}");
    assert!(err.contains("scope admin"), "{err}");
    assert_eq!(as_token("ops", &schedule).0, Some(0));
    assert_eq!(as_token("ops", &["schedule", "rm", "nightly"]).0, Some(0));
    drop(server);

    let o = wj(&["token", "revoke", "ci"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let listed = text(&wj(&["token", "list"]).stdout);
    assert!(
        !listed.contains("ci ") && listed.contains("reader"),
        "{listed}"
    );
    assert_ne!(wj(&["token", "revoke", "ci"]).status.code(), Some(0));
}
