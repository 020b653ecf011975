//! End to end with the real binary: `kill -9` of a loaded server loses nothing, and dead worker
//! nodes' jobs are finished by the others.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasmjobs_tests::{Process, guest_bytes, guests};

async fn upload(http: &reqwest::Client, url: &str, wasm: &str, name: &str) {
    let r = http
        .post(format!("{url}/v1/modules?name={name}"))
        .body(guest_bytes(wasm))
        .send()
        .await
        .expect("upload");
    assert!(r.status().is_success(), "upload {name}: {}", r.status());
}

/// Submits `bodies` with some concurrency; returns the ids the server acknowledged (2xx).
async fn submit_all(http: &reqwest::Client, url: &str, bodies: Vec<Value>) -> Vec<i64> {
    use futures::StreamExt;
    futures::stream::iter(bodies)
        .map(|b| {
            let http = http.clone();
            let url = url.to_string();
            async move {
                let r = http
                    .post(format!("{url}/v1/jobs"))
                    .json(&b)
                    .send()
                    .await
                    .ok()?;
                if !r.status().is_success() {
                    return None;
                }
                r.json::<Value>().await.ok()?["id"].as_i64()
            }
        })
        .buffer_unordered(16)
        .filter_map(|id| async move { id })
        .collect()
        .await
}

fn job_body(i: usize) -> Value {
    match i % 10 {
        0 => {
            json!({"module": "testjob", "input": {"mode": "fail"}, "retry": {"max_attempts": 3, "initial_backoff_ms": "20ms"}})
        }
        1 | 2 => json!({"module": "testjob", "input": {"mode": "sleep", "ms": 30}}),
        _ => json!({"module": "noop", "input": {"n": i}}),
    }
}

/// A database of its own on the Postgres server `pg` (the binary uses the public schema).
fn fresh_database(pg: &str, tag: &str) -> String {
    let dbname = format!("wasmjobs_{tag}_{}", std::process::id());
    let admin = std::process::Command::new("psql")
        .args([
            pg,
            "-q",
            "-c",
            &format!("DROP DATABASE IF EXISTS {dbname}"),
            "-c",
            &format!("CREATE DATABASE {dbname}"),
        ])
        .status();
    assert!(
        admin.is_ok_and(|s| s.success()),
        "cannot create database {dbname} with psql"
    );
    format!(
        "{}/{dbname}",
        pg.rsplit_once('/').map_or(pg, |(base, _)| base)
    )
}

/// Drops a database [`fresh_database`] made.
fn drop_database(pg: &str, db: &str) {
    let dbname = db.rsplit('/').next().unwrap_or_default();
    let _ = std::process::Command::new("psql")
        .args([
            pg,
            "-q",
            "-c",
            &format!("DROP DATABASE IF EXISTS {dbname} WITH (FORCE)"),
        ])
        .status();
}

async fn job(http: &reqwest::Client, url: &str, id: i64) -> Value {
    http.get(format!("{url}/v1/jobs/{id}"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

async fn events(http: &reqwest::Client, url: &str, id: i64) -> Vec<(String, String, Value)> {
    let text = http
        .get(format!("{url}/v1/jobs/{id}/events"))
        .send()
        .await
        .expect("events")
        .text()
        .await
        .expect("text");
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let (mut id, mut ev, mut data) = (String::new(), String::new(), String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().into();
            } else if let Some(v) = line.strip_prefix("event:") {
                ev = v.trim().into();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim());
            }
        }
        if !ev.is_empty() {
            out.push((id, ev, serde_json::from_str(&data).unwrap_or(Value::Null)));
        }
    }
    out
}

/// Every job final; exactly one final state event, last; ids gapless; each attempt started
/// once and ended once.
async fn check_histories(http: &reqwest::Client, url: &str, ids: &[i64]) -> HashMap<String, usize> {
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for &id in ids {
        let j = job(http, url, id).await;
        let state = j["state"].as_str().unwrap_or("").to_string();
        assert!(
            ["succeeded", "failed"].contains(&state.as_str()),
            "job {id} ended {state}: {j}"
        );
        let evs = events(http, url, id).await;
        let seqs: Vec<i64> = evs.iter().filter_map(|(i, _, _)| i.parse().ok()).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as i64).collect::<Vec<_>>(),
            "job {id}: history has gaps"
        );
        let states: Vec<&str> = evs
            .iter()
            .filter(|(_, e, _)| e == "state")
            .filter_map(|(_, _, d)| d["state"].as_str())
            .collect();
        let finals = states
            .iter()
            .filter(|s| ["succeeded", "failed", "cancelled"].contains(s))
            .count();
        assert_eq!(finals, 1, "job {id} ended more than once: {states:?}");
        assert_eq!(
            states.last().copied(),
            Some(state.as_str()),
            "job {id}: {states:?}"
        );
        let running = states.iter().filter(|s| **s == "running").count();
        let attempts = j["attempts"].as_array().map(Vec::len).unwrap_or(0);
        assert_eq!(
            running, attempts,
            "job {id}: {running} starts but {attempts} attempts"
        );
        assert!(
            j["attempts"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|a| !a["outcome"].is_null()),
            "job {id}: an attempt never ended"
        );
        for a in j["attempts"].as_array().into_iter().flatten() {
            *outcomes
                .entry(a["outcome"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
    }
    outcomes
}

async fn wait_all_final(http: &reqwest::Client, url: &str, ids: &[i64], within: Duration) {
    let until = Instant::now() + within;
    let mut pending: Vec<i64> = ids.to_vec();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for &id in &pending {
            let j = job(http, url, id).await;
            if !["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap_or("")) {
                still.push(id);
            }
        }
        pending = still;
        assert!(
            Instant::now() < until,
            "{} jobs not final within {within:?}: {:?}",
            pending.len(),
            &pending[..pending.len().min(10)]
        );
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Waits until some job is running (a kill then finds attempts in flight; on a loaded
/// machine a fixed delay could find the node between jobs, and the round would prove nothing).
async fn wait_some_running(http: &reqwest::Client, url: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let running = http
            .get(format!("{url}/v1/jobs?state=running&limit=1"))
            .send()
            .await
            .expect("list running jobs")
            .json::<Value>()
            .await
            .expect("list running jobs");
        if running["jobs"].as_array().is_some_and(|j| !j.is_empty()) {
            return;
        }
        assert!(Instant::now() < until, "no job ran within 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every succeeded job of `ids` has the output its input asks for: `noop` echoes its input,
/// `testjob` in `sleep` mode answers `"slept"`.
async fn check_outputs(http: &reqwest::Client, url: &str, ids: &[i64]) {
    use base64::Engine as _;
    for &id in ids {
        let j: Value = http
            .get(format!("{url}/v1/jobs/{id}?include=input"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if j["state"] != "succeeded" {
            continue;
        }
        let input = base64::engine::general_purpose::STANDARD
            .decode(j["input_base64"].as_str().unwrap_or(""))
            .expect("base64");
        let input: Value = serde_json::from_slice(&input).expect("JSON input");
        let want = if input["mode"] == "sleep" {
            json!("slept")
        } else {
            input
        };
        assert_eq!(j["output"], want, "job {id}'s output: {j}");
    }
}

/// The `lost` attempts of `ids`: (job, worker, finished_at).
async fn lost_attempts(http: &reqwest::Client, url: &str, ids: &[i64]) -> Vec<(i64, String, i64)> {
    let mut lost = Vec::new();
    for &id in ids {
        let j = job(http, url, id).await;
        for a in j["attempts"].as_array().into_iter().flatten() {
            if a["outcome"] == "lost" {
                lost.push((
                    id,
                    a["worker"].as_str().unwrap_or("").to_string(),
                    a["finished_at"].as_i64().unwrap_or(i64::MAX),
                ));
            }
        }
    }
    lost
}

/// Rounds of `kill -9` of a lone SQLite server under a stream of acknowledged submissions:
/// every acknowledged job ends once, with its history whole, and after each restart the dead
/// process's running jobs are taken back at once — within 5 s of the restart, though their
/// leases (30 s) are far from over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_rounds_lose_nothing_and_restarts_rescue_at_once_sqlite() {
    const ROUNDS: usize = 3;
    const JOBS: usize = 1800;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("wasmjobs.toml"), "lease = \"30s\"\n").expect("config");
    let db = dir.path().join("jobs.db").display().to_string();
    let http = reqwest::Client::new();

    let mut server = Process::serve(dir.path(), &db, &["--workers", "2"]);
    upload(&http, &server.url, guests::NOOP, "noop").await;
    upload(&http, &server.url, guests::TESTJOB, "testjob").await;
    let mut accepted: Vec<i64> = Vec::new();
    let mut restarts: Vec<i64> = Vec::new();
    for round in 0..ROUNDS {
        let url = server.url.clone();
        let batch = JOBS / (ROUNDS + 1);
        let submitter = {
            let http = http.clone();
            tokio::spawn(async move {
                submit_all(
                    &http,
                    &url,
                    (0..batch).map(|i| job_body(i + round)).collect(),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        wait_some_running(&http, &server.url).await;
        server.kill9();
        accepted.extend(submitter.await.expect("submitter"));
        restarts.push(wasmjobs::store::now_ms());
        server = Process::serve(dir.path(), &db, &["--workers", "2"]);
    }
    let needed = JOBS - accepted.len();
    accepted.extend(submit_all(&http, &server.url, (0..needed).map(job_body).collect()).await);
    assert_eq!(accepted.len(), JOBS);
    wait_all_final(&http, &server.url, &accepted, Duration::from_secs(240)).await;
    let outcomes = check_histories(&http, &server.url, &accepted).await;
    assert!(
        outcomes.get("succeeded").copied().unwrap_or(0) >= JOBS * 8 / 10,
        "{outcomes:?}"
    );

    check_outputs(&http, &server.url, &accepted).await;
    let lost = lost_attempts(&http, &server.url, &accepted).await;
    assert!(
        !lost.is_empty(),
        "no attempt was running at a kill: {outcomes:?}"
    );
    for (id, worker, finished_at) in &lost {
        let after = restarts
            .iter()
            .rev()
            .find(|r| **r <= *finished_at)
            .copied()
            .unwrap_or(0);
        assert!(
            finished_at - after <= 5_000,
            "job {id}: the attempt {worker} left running was taken back {} ms after the restart",
            finished_at - after
        );
    }
    eprintln!(
        "RESCUE {} lost attempts over {ROUNDS} restarts, each taken back within {} ms of its restart",
        lost.len(),
        lost.iter()
            .map(|(_, _, f)| f - restarts
                .iter()
                .rev()
                .find(|r| **r <= *f)
                .copied()
                .unwrap_or(0))
            .max()
            .unwrap_or(0)
    );
}

/// Nodes on one Postgres: `serve` and two workers. A worker killed and restarted under its id,
/// and `serve` killed and restarted (a new id, the old process gone from this host), have their
/// running jobs taken back within 5 s of the restart; a worker killed for good has its jobs
/// taken back by the others once its lease ran out (a lease and a third at most, the rescuer's
/// period). Every job ends once, succeeded, with its history whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_nodes_jobs_are_rescued_on_restart_or_after_a_lease_postgres() {
    let Ok(pg) = std::env::var("WASMJOBS_TEST_POSTGRES") else {
        eprintln!(
            "SKIPPED: killed_nodes_jobs_are_rescued_on_restart_or_after_a_lease_postgres (set WASMJOBS_TEST_POSTGRES to run it)"
        );
        return;
    };
    const LEASE_MS: i64 = 12_000;
    let db = fresh_database(&pg, "nodes");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("wasmjobs.toml"),
        format!("lease = \"{LEASE_MS}ms\"\n"),
    )
    .expect("config");
    let http = reqwest::Client::new();
    let mut api = Process::serve(dir.path(), &db, &["--workers", "2"]);
    upload(&http, &api.url, guests::TESTJOB, "testjob").await;
    let mut w1 = Process::worker(dir.path(), &db, "w1");
    let mut w2 = Process::worker(dir.path(), &db, "w2");
    let bodies = (0..400)
        .map(|_| json!({"module": "testjob", "input": {"mode": "sleep", "ms": 100}}))
        .collect();
    let ids = submit_all(&http, &api.url, bodies).await;
    assert_eq!(ids.len(), 400);

    // Round 1: w1 dies and comes back under its id.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    w1.kill9();
    let w1_back = wasmjobs::store::now_ms();
    w1 = Process::worker(dir.path(), &db, "w1");
    // Round 2: serve dies and comes back (a new node id; the old process is gone).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    api.kill9();
    let serve_back = wasmjobs::store::now_ms();
    api = Process::serve(dir.path(), &db, &["--workers", "2"]);
    // Round 3: w2 dies for good.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    w2.kill9();
    let w2_dead = wasmjobs::store::now_ms();

    wait_all_final(&http, &api.url, &ids, Duration::from_secs(180)).await;
    check_histories(&http, &api.url, &ids).await;
    for &id in &ids {
        let j = job(&http, &api.url, id).await;
        assert_eq!(j["state"], "succeeded", "{j}");
    }
    let lost = lost_attempts(&http, &api.url, &ids).await;
    let (mut on_restart, mut on_lease) = (0, 0);
    for (id, worker, finished_at) in &lost {
        let (since, within, what) = match worker.as_str() {
            "w1" => (w1_back, 5_000, "after w1 came back"),
            "w2" => (w2_dead, LEASE_MS + LEASE_MS / 3 + 3_000, "after w2 died"),
            _ => (serve_back, 5_000, "after serve came back"),
        };
        assert!(
            finished_at - since <= within,
            "job {id}: {worker}'s attempt taken back {} ms {what} (at most {within})",
            finished_at - since
        );
        if worker == "w2" {
            on_lease += 1;
        } else {
            on_restart += 1;
        }
    }
    assert!(
        on_restart >= 1 && on_lease >= 1,
        "the killed nodes had jobs in flight: {lost:?}"
    );
    eprintln!(
        "RESCUE {on_restart} attempts taken back on restart, {on_lease} after the dead node's lease"
    );

    // Live events across processes: a worker writes them, the API node streams them (NOTIFY).
    let r = http
        .post(format!("{}/v1/jobs", api.url))
        .json(&json!({"module": "testjob", "input": {"mode": "sleep", "ms": 800}}))
        .send()
        .await
        .expect("submit");
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_i64()
        .expect("id");
    let started = Instant::now();
    let live = events(&http, &api.url, id).await;
    let kinds: Vec<String> = live
        .iter()
        .map(|(_, e, d)| format!("{e}:{}", d["state"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("end:succeeded"),
        "{kinds:?}"
    );
    assert!(kinds.contains(&"state:running".to_string()), "{kinds:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "the stream did not wait: {kinds:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stream ended late: {:?}",
        started.elapsed()
    );
    drop((w1, w2, api));
    drop_database(&pg, &db);
}

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
    assert_ne!(o.status.code(), Some(0));
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
    assert_eq!(o.status.code(), Some(3));
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
    assert_eq!(o.status.code(), Some(3));
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
    assert_eq!(o.status.code(), Some(3));
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

/// `kill -9` of the server in the middle of workflow runs, then a restart on the same store:
/// every run finishes, and a node that had finished keeps its job (same id, one attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_workflow_resumes_without_rerunning_finished_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut dbs = vec![("sqlite", dir.path().join("wf.db").display().to_string())];
    match std::env::var("WASMJOBS_TEST_POSTGRES") {
        Ok(pg) if !pg.is_empty() => dbs.push(("postgres", fresh_database(&pg, "wf_crash"))),
        _ => eprintln!(
            "SKIPPED: the Postgres half of kill_9_mid_workflow_resumes_without_rerunning_finished_nodes (set WASMJOBS_TEST_POSTGRES to run it)"
        ),
    }
    std::fs::write(dir.path().join("wasmjobs.toml"), "lease = \"2s\"\n").expect("config");
    let http = reqwest::Client::new();
    for (backend, db) in dbs {
        let mut server = Process::serve(dir.path(), &db, &["--workers", "2"]);
        upload(&http, &server.url, guests::FLOW, "flow").await;
        let definition = json!({ "name": "crash", "nodes": [
            { "name": "a", "module": "flow" },
            { "name": "b", "module": "flow", "needs": ["a"] },
            { "name": "fan", "module": "flow", "needs": ["b"],
              "for_each": { "items": "/items", "concurrency": 2 } },
            { "name": "d", "module": "flow", "needs": ["fan"] },
        ]});
        let r = http
            .post(format!("{}/v1/workflows", server.url))
            .json(&definition)
            .send()
            .await
            .expect("define");
        assert!(r.status().is_success(), "{backend}: define {}", r.status());
        let input = json!({ "n": 0, "sleep_ms": 400, "items": (1..=10).collect::<Vec<i64>>() });
        let mut runs = Vec::new();
        for _ in 0..3 {
            let v: Value = http
                .post(format!("{}/v1/workflows/crash/runs", server.url))
                .json(&json!({ "input": input }))
                .send()
                .await
                .expect("start")
                .json()
                .await
                .expect("json");
            runs.push(v["id"].as_i64().expect("run id"));
        }
        let get = |url: String| {
            let http = http.clone();
            async move {
                http.get(url)
                    .send()
                    .await
                    .expect("get")
                    .json::<Value>()
                    .await
                    .expect("json")
            }
        };
        let node_of = |run: &Value, name: &str| -> Value {
            run["nodes"]
                .as_array()
                .and_then(|ns| ns.iter().find(|n| n["name"] == name))
                .cloned()
                .unwrap_or(Value::Null)
        };
        // Kill it once every run's first node finished, with jobs of the runs still running.
        let until = Instant::now() + Duration::from_secs(30);
        let done_before: Vec<Vec<(String, i64)>> = loop {
            let mut all = Vec::new();
            let mut running = false;
            for id in &runs {
                let run = get(format!("{}/v1/workflow-runs/{id}", server.url)).await;
                running |= run["state"] == "running";
                let done: Vec<(String, i64)> = ["a", "b", "d"]
                    .iter()
                    .filter(|n| node_of(&run, n)["state"] == "succeeded")
                    .map(|n| {
                        (
                            n.to_string(),
                            node_of(&run, n)["job"].as_i64().expect("job"),
                        )
                    })
                    .collect();
                all.push(done);
            }
            if all.iter().all(|d| d.iter().any(|(n, _)| n == "a")) {
                assert!(running, "{backend}: every run ended before the kill");
                break all;
            }
            assert!(
                Instant::now() < until,
                "{backend}: the runs never got past a"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        server.kill9();

        let server = Process::serve(dir.path(), &db, &["--workers", "2"]);
        for (id, done) in runs.iter().zip(&done_before) {
            let until = Instant::now() + Duration::from_secs(90);
            let run = loop {
                let run = get(format!("{}/v1/workflow-runs/{id}", server.url)).await;
                if ["succeeded", "failed", "cancelled"]
                    .contains(&run["state"].as_str().unwrap_or(""))
                {
                    break run;
                }
                assert!(
                    Instant::now() < until,
                    "{backend}: run {id} did not finish: {run}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert_eq!(run["state"], "succeeded", "{backend}: {run}");
            let doubled: Vec<i64> = (1..=10).map(|x| x * 2).collect();
            assert_eq!(
                run["output"],
                json!({ "count": 10, "items": doubled }),
                "{backend}"
            );
            // Every node that had finished before the kill kept its job, which ran once.
            for (name, job_id) in done {
                assert_eq!(
                    node_of(&run, name)["job"].as_i64(),
                    Some(*job_id),
                    "{backend}: {name} kept its job"
                );
                let j = job(&http, &server.url, *job_id).await;
                assert_eq!(
                    j["attempts"].as_array().map(Vec::len),
                    Some(1),
                    "{backend}: a finished node never runs again: {j}"
                );
            }
        }
        drop(server);
        if backend == "postgres"
            && let Ok(pg) = std::env::var("WASMJOBS_TEST_POSTGRES")
        {
            drop_database(&pg, &db);
        }
    }
}

/// A run whose pinned definition can no longer be used after a restart (here: edited in the
/// database to one that does not validate) fails with a message saying so, instead of being
/// stepped for ever; its running job is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_definition_became_unusable_fails_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bad.db").display().to_string();
    std::fs::write(dir.path().join("wasmjobs.toml"), "lease = \"2s\"\n").expect("config");
    let http = reqwest::Client::new();
    let mut server = Process::serve(dir.path(), &db, &["--workers", "2"]);
    upload(&http, &server.url, guests::FLOW, "flow").await;
    let r = http
        .post(format!("{}/v1/workflows", server.url))
        .json(&json!({ "name": "doomed", "nodes": [
            { "name": "a", "module": "flow" },
            { "name": "b", "module": "flow", "needs": ["a"] },
        ]}))
        .send()
        .await
        .expect("define");
    assert!(r.status().is_success());
    let run: Value = http
        .post(format!("{}/v1/workflows/doomed/runs", server.url))
        .json(&json!({ "input": { "n": 0, "sleep_ms": 20_000 } }))
        .send()
        .await
        .expect("start")
        .json()
        .await
        .expect("json");
    let id = run["id"].as_i64().expect("id");
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let v: Value = http
            .get(format!("{}/v1/workflow-runs/{id}", server.url))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if let Some(j) = v["nodes"][0]["job"].as_i64()
            && job(&http, &server.url, j).await["state"] == "running"
        {
            break;
        }
        assert!(Instant::now() < until, "a never ran: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{db}"))
        .await
        .expect("open the database");
    sqlx::query("UPDATE workflows SET definition = '{\"name\": \"doomed\", \"nodes\": []}'")
        .execute(&pool)
        .await
        .expect("edit");
    pool.close().await;

    let server = Process::serve(dir.path(), &db, &["--workers", "2"]);
    let until = Instant::now() + Duration::from_secs(30);
    let run = loop {
        let v: Value = http
            .get(format!("{}/v1/workflow-runs/{id}", server.url))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .unwrap_or(Value::Null);
        if v["state"] == "failed" {
            break v;
        }
        assert!(Instant::now() < until, "the run did not fail: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = run["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the run's definition cannot be used") && error.contains("no nodes"),
        "{error}"
    );
    // The job that was running at the kill is not run again to completion: it ends cancelled.
    let a_job = run["nodes"][0]["job"].as_i64().expect("a's job");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let j = job(&http, &server.url, a_job).await;
        if j["state"] == "cancelled" {
            break;
        }
        assert!(Instant::now() < until, "a's job was not stopped: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
