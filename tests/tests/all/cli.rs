//! The `wasmjobs` command line, driven as a user would: the real binary, real components.

use std::process::{Command, Output};

use serde_json::{Value, json};
use wasmjobs_tests::{guests, wasmjobs_bin};

fn wasmjobs(args: &[&str]) -> Output {
    Command::new(wasmjobs_bin())
        .args(args)
        .output()
        .expect("run wasmjobs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn run_prints_output_on_stdout_and_logs_on_stderr() {
    let o = wasmjobs(&[
        "run",
        guests::WORDFREQ,
        "--input",
        r#"{"text": "b a b c b a", "top": 2}"#,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out: Value = serde_json::from_str(&stdout(&o)).expect("JSON output");
    assert_eq!(
        out,
        json!({"words": 6, "unique": 3, "top": [{"word": "b", "count": 3}, {"word": "a", "count": 2}]})
    );
    assert!(
        stderr(&o).contains("[info report] 6 words, 3 distinct"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn each_outcome_has_its_documented_exit_code() {
    let cases: [(&str, &[&str], i32); 6] = [
        (r#"{"mode":"fail"}"#, &[], 1),
        (r#"{"mode":"panic"}"#, &[], 10),
        (r#"{"mode":"spin"}"#, &["--fuel", "1e7"], 11),
        (
            r#"{"mode":"spin"}"#,
            &["--fuel", "1e15", "--timeout", "200ms"],
            12,
        ),
        (r#"{"mode":"membomb"}"#, &["--memory", "16MiB"], 13),
        (
            r#"{"mode":"bigout","size":5000}"#,
            &["--max-output", "1KiB"],
            14,
        ),
    ];
    for (input, flags, code) in cases {
        let mut args = vec!["run", guests::TESTJOB, "--input", input];
        args.extend_from_slice(flags);
        let o = wasmjobs(&args);
        assert_eq!(
            o.status.code(),
            Some(code),
            "{input} {flags:?}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn report_flag_prints_the_attempt_report_as_json() {
    let o = wasmjobs(&[
        "run",
        guests::TESTJOB,
        "--input",
        r#"{"mode":"panic"}"#,
        "--report",
    ]);
    assert_eq!(o.status.code(), Some(10));
    let report: Value = serde_json::from_str(&stdout(&o)).expect("report JSON");
    assert_eq!(report["outcome"], "trapped");
    assert_eq!(report["trap"], "unreachable");
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("boom on purpose"))
    );
    assert!(report["fuel_consumed"].as_u64().is_some_and(|f| f > 0));
    assert!(report["wall_time_us"].as_u64().is_some());
    assert!(report["logs"].as_array().is_some_and(|l| !l.is_empty()));
}

#[test]
fn input_from_a_file_grants_and_command_components() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "one two\nthree\n").expect("write");
    let o = wasmjobs(&[
        "run",
        guests::LINECOUNT,
        "--input",
        &format!("@{}", input.display()),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out: Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(out, json!({"lines": 2, "words": 3, "bytes": 14}));

    std::fs::write(dir.path().join("in.txt"), "granted").expect("write");
    let grant = format!("{}:/data", dir.path().display());
    let o = wasmjobs(&[
        "run",
        guests::TESTJOB,
        "--input",
        r#"{"mode":"files"}"#,
        "--dir",
        &grant,
    ]);
    let out: Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(out["read"], json!({"Ok": "granted"}));
    assert!(
        out["write"]
            .as_str()
            .is_some_and(|w| w.starts_with("refused"))
    );

    let o = wasmjobs(&[
        "run",
        guests::TESTJOB,
        "--input",
        r#"{"mode":"env"}"#,
        "--env",
        "A=1",
    ]);
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&o)).expect("JSON"),
        json!([["A", "1"]])
    );
}

#[test]
fn bad_flags_and_files_get_one_clear_line() {
    let o = wasmjobs(&["run", guests::TESTJOB, "--timeout", "soon"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("invalid duration \"soon\""),
        "{}",
        stderr(&o)
    );

    let o = wasmjobs(&["run", guests::TESTJOB, "--dir", "/tmp"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("HOST:GUEST"), "{}", stderr(&o));

    let o = wasmjobs(&["run", "/no/such/file.wasm"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).starts_with("error: cannot read /no/such/file.wasm"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"));

    let dir = tempfile::tempdir().expect("tempdir");
    let text = dir.path().join("notwasm.wasm");
    std::fs::write(&text, "hello").expect("write");
    let o = wasmjobs(&["run", text.to_str().expect("utf-8 path")]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("not a WebAssembly binary"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn inspect_describes_a_component() {
    let o = wasmjobs(&["inspect", guests::TESTJOB, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let info: Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(info["world"], "wasmjobs:job/job");
    assert!(
        info["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
    assert!(
        info["exports"]
            .as_array()
            .is_some_and(|e| e.contains(&json!("run")))
    );
    assert!(
        info["capabilities"]
            .as_array()
            .is_some_and(|c| c.contains(&json!("wasmjobs:job/report")))
    );

    let o = wasmjobs(&["inspect", guests::LINECOUNT]);
    assert!(
        stdout(&o).contains("world:   wasi:cli/command"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn compile_then_run_the_artifact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cwasm = dir.path().join("noop.cwasm");
    let o = wasmjobs(&[
        "compile",
        guests::NOOP,
        "-o",
        cwasm.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = wasmjobs(&["run", cwasm.to_str().expect("utf-8"), "--input", "ping"]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "ping"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn compile_for_a_named_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let arm = dir.path().join("noop-aarch64.cwasm");
    let o = wasmjobs(&[
        "compile",
        guests::NOOP,
        "--target",
        "aarch64-unknown-linux-gnu",
        "-o",
        arm.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let bytes = std::fs::read(&arm).expect("artifact written");
    // An ELF file for the AArch64 machine (e_machine 183 at offset 18).
    assert!(bytes.starts_with(b"\x7fELF"));
    assert_eq!(
        u16::from_le_bytes([bytes[18], bytes[19]]),
        183,
        "EM_AARCH64"
    );
    // This x86_64 machine refuses to run it, saying why.
    let o = wasmjobs(&["run", arm.to_str().expect("utf-8"), "--input", "x"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("incompatible"), "{}", stderr(&o));

    // A target that does not exist, and a component that is not a job: one clear line each.
    let o = wasmjobs(&["compile", guests::NOOP, "--target", "vax-dec-ultrix"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("vax-dec-ultrix"), "{}", stderr(&o));
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
    let o = wasmjobs(&[
        "compile",
        core.to_str().expect("utf-8"),
        "--target",
        "aarch64-unknown-linux-gnu",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("core WebAssembly module"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn build_compiles_a_job_crate_and_prints_the_component() {
    let root = std::path::Path::new(guests::ROOT);
    let o = Command::new(wasmjobs_bin())
        .args([
            "build",
            root.join("examples/markdown").to_str().expect("utf-8"),
        ])
        // Use the examples' own target dir so this is a quick no-op rebuild.
        .env("CARGO_TARGET_DIR", root.join("target/wasm-guests"))
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let path = stdout(&o).trim().to_string();
    assert!(path.ends_with("markdown.wasm"), "{path}");
    let o = wasmjobs(&["run", &path, "--input", "# Title\n\n*hi*"]);
    assert_eq!(stdout(&o), "<h1>Title</h1>\n<p><em>hi</em></p>\n");

    let o = wasmjobs(&["build", "/no/such/crate"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("no Cargo.toml"), "{}", stderr(&o));
}

/// `completions` prints a script for each shell, and a verb whose reader goes away ends as
/// `cargo … | head` does: quietly, no panic, no backtrace.
#[test]
fn completions_for_each_shell_and_a_closed_pipe_ends_quietly() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef wasmjobs"),
        ("fish", "complete -c wasmjobs"),
    ] {
        let o = wasmjobs(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
        assert!(stdout(&o).contains(marker), "{shell}");
        assert!(
            stdout(&o).contains("submit"),
            "{shell}: the verbs are in it"
        );
    }
    // The bash script is larger than a pipe's buffer: the writer meets the closed pipe.
    let mut child = Command::new(wasmjobs_bin())
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut head = [0u8; 100];
    std::io::Read::read_exact(child.stdout.as_mut().expect("stdout"), &mut head).expect("read");
    drop(child.stdout.take());
    let o = child.wait_with_output().expect("wait");
    use std::os::unix::process::ExitStatusExt as _;
    assert!(
        o.status.success() || o.status.signal() == Some(13),
        "{:?}: {}",
        o.status,
        stderr(&o)
    );
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

/// The client verbs take the values `run` takes, and refuse a bad one before sending anything
/// (here, to a server that is not there): a usage error naming the value.
#[test]
fn client_verbs_check_values_before_sending() {
    for (flag, value) in [
        ("--memory", "64potatoes"),
        ("--fuel", "lots"),
        ("--timeout", "soon"),
    ] {
        let o = wasmjobs(&[
            "job",
            "submit",
            "m",
            flag,
            value,
            "--server",
            "http://127.0.0.1:9",
        ]);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {}", stderr(&o));
        assert!(stderr(&o).contains(value), "{}", stderr(&o));
        assert!(!stderr(&o).contains("cannot reach"), "{}", stderr(&o));
    }
    let o = wasmjobs(&[
        "job",
        "submit",
        "m",
        "--input",
        "@/no/such/file",
        "--server",
        "http://127.0.0.1:9",
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("/no/such/file"), "{}", stderr(&o));
}

/// The guest SDK as a published crate: `cargo package` succeeds, and a job crate outside this
/// repository that depends on the packaged SDK (the WIT travels inside it) builds to a
/// component that `wasmjobs run` runs.
#[test]
fn the_packaged_guest_sdk_builds_a_job_outside_the_repository() {
    let root = std::path::Path::new(guests::ROOT);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // A target directory of its own, kept between runs, so that the packaging does not wait
    // on the lock of the build running this test.
    let target = root.join("target").join("guest-package");
    let o = Command::new(&cargo)
        .args([
            "package",
            "-p",
            "wasmjobs-guest",
            "--allow-dirty",
            "--no-verify",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(root)
        .output()
        .expect("run cargo package");
    assert!(o.status.success(), "cargo package: {}", stderr(&o));
    let version = env!("CARGO_PKG_VERSION");
    let packaged = target
        .join("package")
        .join(format!("wasmjobs-guest-{version}.crate"));
    let outside = tempfile::tempdir().expect("tempdir");
    let o = Command::new("tar")
        .arg("xzf")
        .arg(&packaged)
        .current_dir(outside.path())
        .output()
        .expect("untar");
    assert!(o.status.success(), "{}", stderr(&o));
    let sdk = outside.path().join(format!("wasmjobs-guest-{version}"));
    assert!(
        sdk.join("wit/job.wit").is_file(),
        "the WIT travels in the crate"
    );
    let job = outside.path().join("shout");
    std::fs::create_dir_all(job.join("src")).expect("mkdir");
    std::fs::write(
        job.join("Cargo.toml"),
        format!(
            "[package]\nname = \"shout\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nwasmjobs-guest = {{ path = {:?} }}\n\n[workspace]\n",
            sdk.display().to_string()
        ),
    )
    .expect("Cargo.toml");
    std::fs::write(
        job.join("src/lib.rs"),
        "fn shout(text: String) -> Result<String, String> {\n    Ok(text.to_uppercase())\n}\n\nwasmjobs_guest::export_job!(shout);\n",
    )
    .expect("lib.rs");
    let o = Command::new(&cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", target.join("job"))
        .current_dir(&job)
        .output()
        .expect("cargo build");
    assert!(o.status.success(), "building the job: {}", stderr(&o));
    let wasm = target.join("job/wasm32-wasip2/release/shout.wasm");
    let o = wasmjobs(&[
        "run",
        wasm.to_str().expect("utf-8"),
        "--input",
        r#""quiet""#,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), r#""QUIET""#);
}
