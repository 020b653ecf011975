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
/// fuel and one that panics: the attempts by outcome and trap, the histograms' counts, the
/// claims, the retries, the slots, the HTTP requests by route template, and the jobs by state
/// all come out as counted.
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
    assert_eq!(by_outcome("succeeded"), 3.0, "{text}");
    assert_eq!(by_outcome("failed"), 4.0, "{text}");
    assert_eq!(by_outcome("out_of_fuel"), 1.0, "{text}");
    assert_eq!(
        get(r#"wasmjobs_attempts_total{outcome="trapped",trap="unreachable"}"#),
        1.0
    );
    for histogram in [
        "wasmjobs_attempt_duration_seconds",
        "wasmjobs_attempt_fuel",
        "wasmjobs_attempt_peak_memory_bytes",
    ] {
        assert_eq!(get(&format!("{histogram}_count")), 9.0, "{histogram}");
        assert_eq!(
            get(&format!("{histogram}_bucket{{le=\"+Inf\"}}")),
            9.0,
            "{histogram}"
        );
    }
    assert!(
        get("wasmjobs_attempt_fuel_sum") >= 1_000_000.0,
        "the spin burned its fuel"
    );
    assert_eq!(get("wasmjobs_jobs_claimed_total"), 9.0);
    assert_eq!(get("wasmjobs_retries_scheduled_total"), 2.0);
    assert_eq!(get("wasmjobs_slots"), 2.0);
    assert_eq!(get("wasmjobs_slots_busy"), 0.0);
    assert_eq!(
        get(r#"wasmjobs_http_requests_total{method="POST",route="/v1/jobs",status="201"}"#),
        7.0
    );
    assert!(
        !text.contains(&format!("/v1/jobs/{}", ids[0])),
        "routes are templates, never ids"
    );
    assert_eq!(get(r#"wasmjobs_jobs{state="succeeded"}"#), 3.0);
    assert_eq!(get(r#"wasmjobs_jobs{state="failed"}"#), 4.0);
}
