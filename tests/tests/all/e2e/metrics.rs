//! `GET /metrics` of the real binary after a known workload: the numbers, not only the names.

use super::*;

/// Prometheus text as `name{labels}` → value (comments and blank lines left out).
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Three jobs that succeed, two that fail twice each (one retry each), one that runs out of
/// fuel and one that panics; two jobs scheduled far ahead, one of them then cancelled; a
/// workflow run of two nodes side by side: the attempts by outcome and trap, the histograms' counts
/// (attempts, queue waits, instantiations, ends, nodes), the claims, the retries, the slots,
/// the HTTP requests by route template, the unfinished jobs by state, the jobs and runs ended
/// by state all come out as counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_workload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("m.db").display().to_string();
    let server = Process::serve(dir.path(), &db, &["--workers", "2"]);
    let http = reqwest::Client::new();
    upload(&http, &server.url, guests::TESTJOB, "testjob").await;
    let once = json!({"max_attempts": 1});
    let mut bodies = Vec::new();
    for name in ["a", "b", "c"] {
        bodies.push(json!({"module": "testjob", "input": {"mode": "greet", "name": name}}));
    }
    for _ in 0..2 {
        bodies.push(json!({"module": "testjob", "input": {"mode": "fail"},
            "retry": {"max_attempts": 2, "initial_backoff_ms": "10ms"}}));
    }
    bodies.push(json!({"module": "testjob", "input": {"mode": "spin"}, "limits": {"fuel": 1_000_000}, "retry": once}));
    bodies.push(json!({"module": "testjob", "input": {"mode": "panic"}, "retry": once}));
    let ids = submit_all(&http, &server.url, bodies).await;
    wait_all_final(&http, &server.url, &ids, Duration::from_secs(60)).await;
    let later =
        json!({"module": "testjob", "input": {"mode": "greet"}, "run_at": 4_000_000_000_000i64});
    let waiting = submit_all(&http, &server.url, vec![later.clone(), later]).await;
    let cancel = http
        .post(format!("{}/v1/jobs/{}/cancel", server.url, waiting[0]))
        .send()
        .await
        .expect("cancel");
    assert!(cancel.status().is_success(), "{}", cancel.status());
    let definition = json!({"name": "pair", "nodes": [
        {"name": "first", "module": "testjob"},
        {"name": "second", "module": "testjob"}]});
    let created = http
        .post(format!("{}/v1/workflows", server.url))
        .json(&definition)
        .send()
        .await
        .expect("create workflow");
    assert!(created.status().is_success(), "{}", created.status());
    let run: Value = http
        .post(format!("{}/v1/workflows/pair/runs", server.url))
        .json(&json!({"input": {"mode": "greet", "name": "flow"}}))
        .send()
        .await
        .expect("start run")
        .json()
        .await
        .expect("run json");
    let run_url = format!("{}/v1/workflow-runs/{}", server.url, run["id"]);
    wait_for_state(&http, &run_url, "succeeded", Duration::from_secs(60)).await;
    // The last attempts' completions are written before their jobs read final; give the
    // slots a moment to be handed back.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let text = http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    let m = parse(&text);
    let get = |key: &str| {
        m.get(key)
            .copied()
            .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
    };
    let by_outcome = |outcome: &str| -> f64 {
        m.iter()
            .filter(|(k, _)| {
                k.starts_with("wasmjobs_attempts_total{")
                    && k.contains(&format!("outcome=\"{outcome}\""))
            })
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(by_outcome("succeeded"), 5.0, "{text}");
    assert_eq!(by_outcome("failed"), 4.0, "{text}");
    assert_eq!(by_outcome("out_of_fuel"), 1.0, "{text}");
    assert_eq!(
        get(r#"wasmjobs_attempts_total{outcome="trapped",trap="unreachable"}"#),
        1.0
    );
    // 11 attempts: the 7 jobs' 9 and the run's 2.
    for histogram in [
        "wasmjobs_attempt_duration_seconds",
        "wasmjobs_attempt_fuel",
        "wasmjobs_attempt_peak_memory_bytes",
        "wasmjobs_queue_wait_seconds",
        "wasmjobs_instantiate_duration_seconds",
    ] {
        assert_eq!(get(&format!("{histogram}_count")), 11.0, "{histogram}");
        assert_eq!(
            get(&format!("{histogram}_bucket{{le=\"+Inf\"}}")),
            11.0,
            "{histogram}"
        );
    }
    // Every attempt instantiated its component in well under its wall time.
    assert!(
        get("wasmjobs_instantiate_duration_seconds_sum")
            < get("wasmjobs_attempt_duration_seconds_sum")
    );
    // 9 jobs ended by their attempts (the run's 2 among them); the two retries waited at
    // least their 10 ms backoff in all, from submission to end.
    assert_eq!(get("wasmjobs_job_end_to_end_seconds_count"), 9.0);
    assert!(get("wasmjobs_job_end_to_end_seconds_sum") >= 0.02);
    assert!(
        get("wasmjobs_attempt_fuel_sum") >= 1_000_000.0,
        "the spin burned its fuel"
    );
    assert_eq!(get("wasmjobs_jobs_claimed_total"), 11.0);
    assert_eq!(get("wasmjobs_retries_scheduled_total"), 2.0);
    assert_eq!(get("wasmjobs_slots"), 2.0);
    assert_eq!(get("wasmjobs_slots_busy"), 0.0);
    assert_eq!(
        get(r#"wasmjobs_http_requests_total{method="POST",route="/v1/jobs",status="201"}"#),
        9.0
    );
    assert!(
        !text.contains(&format!("/v1/jobs/{}", ids[0])),
        "routes are templates, never ids"
    );
    // What waits or runs, from the store; what ended, counted as it ended.
    assert_eq!(get(r#"wasmjobs_jobs{state="scheduled"}"#), 1.0);
    assert_eq!(get(r#"wasmjobs_jobs{state="queued"}"#), 0.0);
    assert_eq!(get(r#"wasmjobs_jobs{state="running"}"#), 0.0);
    assert!(!text.contains(r#"wasmjobs_jobs{state="succeeded"}"#));
    // The same by queue (every job here is in `default`).
    assert_eq!(
        get(r#"wasmjobs_queue_jobs{queue="default",state="scheduled"}"#),
        1.0
    );
    assert_eq!(
        get(r#"wasmjobs_queue_jobs{queue="default",state="running"}"#),
        0.0
    );
    assert_eq!(get(r#"wasmjobs_queue_paused{queue="default"}"#), 0.0);
    assert_eq!(get(r#"wasmjobs_jobs_ended_total{state="succeeded"}"#), 5.0);
    assert_eq!(get(r#"wasmjobs_jobs_ended_total{state="failed"}"#), 4.0);
    assert_eq!(get(r#"wasmjobs_jobs_ended_total{state="cancelled"}"#), 1.0);
    assert_eq!(
        get(r#"wasmjobs_workflow_runs_ended_total{state="succeeded"}"#),
        1.0
    );
    assert_eq!(get(r#"wasmjobs_workflow_runs{state="running"}"#), 0.0);
    assert_eq!(
        get(r#"wasmjobs_workflow_node_duration_seconds_count{state="succeeded"}"#),
        2.0
    );
}

/// With `--log-format json`, every log line is a JSON object: the span of each HTTP request
/// (method, route template, status, latency) and of each attempt (job, attempt, module,
/// outcome, fuel) at debug, and an info line for a job that ended other than `succeeded`
/// (job, outcome, error). In text, a log written to a file carries no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_with_request_and_attempt_spans() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("l.db").display().to_string();
    let server = Process::serve_env(
        dir.path(),
        &db,
        &["--workers", "1", "--log-format", "json"],
        &[("WASMJOBS_LOG", "info,wasmjobs=debug,sqlx=warn")],
    );
    let http = reqwest::Client::new();
    upload(&http, &server.url, guests::TESTJOB, "testjob").await;
    let ids = submit_all(
        &http,
        &server.url,
        vec![json!({"module": "testjob", "input": {"mode": "fail"}, "retry": {"max_attempts": 1}})],
    )
    .await;
    wait_all_final(&http, &server.url, &ids, Duration::from_secs(30)).await;
    let later =
        json!({"module": "testjob", "input": {"mode": "greet"}, "run_at": 4_000_000_000_000i64});
    let cancelled = submit_all(&http, &server.url, vec![later]).await[0];
    let r = http
        .post(format!("{}/v1/jobs/{cancelled}/cancel", server.url))
        .send()
        .await
        .expect("cancel");
    assert!(r.status().is_success(), "{}", r.status());
    drop(server);
    let log = std::fs::read_to_string(dir.path().join(format!("serve-{}.log", std::process::id())))
        .expect("the server's log");
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let job = ids[0];
    assert!(
        lines.iter().any(|l| l["span"]["name"] == "http_request"
            && l["span"]["route"] == "/v1/jobs"
            && l["span"]["method"] == "POST"
            && l["span"]["status"] == 201
            && l["span"]["latency_ms"].as_f64().is_some()),
        "no request span:\n{log}"
    );
    assert!(
        lines.iter().any(|l| l["span"]["name"] == "attempt"
            && l["span"]["job"] == job
            && l["span"]["outcome"] == "failed"
            && l["span"]["fuel"].as_u64().is_some_and(|f| f > 0)
            && l["span"]["module"]
                .as_str()
                .is_some_and(|m| m.starts_with("sha256:"))),
        "no attempt span:\n{log}"
    );
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"
            && l["fields"]["job"] == job
            && l["fields"]["outcome"] == "failed"
            && l["fields"]["error"] == "this job fails on purpose"),
        "no line for the failed job:\n{log}"
    );
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"
            && l["fields"]["job"] == cancelled
            && l["fields"]["error"] == "cancelled while waiting"),
        "no line for the job cancelled while waiting:\n{log}"
    );

    let text_dir = tempfile::tempdir().expect("tempdir");
    let db = text_dir.path().join("t.db").display().to_string();
    let server = Process::serve_env(text_dir.path(), &db, &[], &[("WASMJOBS_LOG", "info")]);
    upload(&http, &server.url, guests::NOOP, "noop").await;
    drop(server);
    let log = std::fs::read_to_string(
        text_dir
            .path()
            .join(format!("serve-{}.log", std::process::id())),
    )
    .expect("the server's log");
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log file: {log:?}");
}

/// A `worker` has no API: `--metrics-addr` serves its own `GET /metrics`, which counts the
/// attempts it ran and its slots (here every job runs on the worker: the server runs none),
/// here with the module labels the worker's configuration opts in to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_its_own_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("w.db").display().to_string();
    let server = Process::serve(dir.path(), &db, &["--no-workers"]);
    let addr = format!("127.0.0.1:{}", wasmjobs_tests::free_port());
    let config = dir.path().join("worker.toml");
    std::fs::write(&config, "[metrics]\nmodule_labels = true\n").expect("write config");
    let config = config.display().to_string();
    let worker = Process::worker_with(
        dir.path(),
        &db,
        "w1",
        &["--metrics-addr", &addr, "--config", &config],
    );
    let http = reqwest::Client::new();
    upload(&http, &server.url, guests::TESTJOB, "testjob").await;
    let bodies = (0..3)
        .map(|i| json!({"module": "testjob", "input": {"mode": "greet", "name": format!("w{i}")}}))
        .collect();
    let ids = submit_all(&http, &server.url, bodies).await;
    wait_all_final(&http, &server.url, &ids, Duration::from_secs(60)).await;
    let until = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let scraped = http.get(format!("http://{addr}/metrics")).send().await;
        if let Ok(r) = scraped {
            let text = r.text().await.expect("text");
            if text.contains("wasmjobs_attempts_total") {
                break text;
            }
        }
        assert!(
            Instant::now() < until,
            "the worker's metrics never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let m = parse(&text);
    let digest = text
        .split("module=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no module label in:\n{text}"));
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(
        m.get(&format!(
            r#"wasmjobs_attempts_total{{outcome="succeeded",trap="none",module="{digest}"}}"#
        )),
        Some(&3.0),
        "{text}"
    );
    assert_eq!(m.get("wasmjobs_slots"), Some(&2.0), "{text}");
    drop((worker, server));
}

/// A job whose last allowed attempt was lost (its worker killed, its lease run out) ends
/// `failed`: the node that rescued it says so at info, with the outcome `lost`, and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_ended_by_a_lost_attempt_is_logged_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("wasmjobs.toml"), "lease = \"2s\"\n").expect("config");
    let db = dir.path().join("lost.db").display().to_string();
    let server = Process::serve(dir.path(), &db, &["--no-workers"]);
    let http = reqwest::Client::new();
    upload(&http, &server.url, guests::TESTJOB, "testjob").await;
    let mut first = Process::worker(dir.path(), &db, "w1");
    let id = submit_all(
        &http,
        &server.url,
        vec![
            json!({"module": "testjob", "input": {"mode": "sleep", "ms": 60000},
            "retry": {"max_lost": 1}}),
        ],
    )
    .await[0];
    let job_url = format!("{}/v1/jobs/{id}", server.url);
    wait_for_state(&http, &job_url, "running", Duration::from_secs(30)).await;
    first.kill9();
    let addr = format!("127.0.0.1:{}", wasmjobs_tests::free_port());
    let second = Process::worker_env(
        dir.path(),
        &db,
        "w2",
        &["--metrics-addr", &addr, "--log-format", "json"],
        &[("WASMJOBS_LOG", "info")],
    );
    wait_all_final(&http, &server.url, &[id], Duration::from_secs(30)).await;
    let until = Instant::now() + Duration::from_secs(10);
    let text = loop {
        if let Ok(r) = http.get(format!("http://{addr}/metrics")).send().await {
            let text = r.text().await.expect("text");
            if text.contains("wasmjobs_jobs_ended_total") {
                break text;
            }
        }
        assert!(Instant::now() < until, "no end counted by the rescuer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        parse(&text).get(r#"wasmjobs_jobs_ended_total{state="failed"}"#),
        Some(&1.0),
        "{text}"
    );
    drop(second);
    let log = std::fs::read_to_string(
        dir.path()
            .join(format!("worker-{}.log", std::process::id())),
    )
    .expect("the worker's log");
    assert!(
        log.lines().any(|l| l.contains("\"level\":\"INFO\"")
            && l.contains(&format!("\"job\":{id}"))
            && l.contains("\"outcome\":\"lost\"")
            && l.contains("stopped renewing its lease")),
        "no info line for the job its lost attempt ended:\n{log}"
    );
    drop(server);
}
