//! Queues with the real binary: fair shares against a backlog, pause and resume from the CLI,
//! `max_running` and `rate` held across three nodes on one Postgres, and concurrency keys.

use super::*;

async fn queues(http: &reqwest::Client, url: &str) -> Vec<Value> {
    let v: Value = http
        .get(format!("{url}/v1/queues"))
        .send()
        .await
        .expect("get queues")
        .json()
        .await
        .expect("json");
    v["queues"].as_array().cloned().unwrap_or_default()
}

fn queue<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("queue {name} not listed: {list:?}"))
}

/// A backlog in `bulk` submitted first does not hold back the jobs of `default` (equal
/// weights, two slots): they end while most of the backlog still waits. A queue declared
/// paused keeps its job until `wasmjobs queue resume`; bad queue names and unknown queues
/// are refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_does_not_hold_back_another_queue_and_a_paused_queue_waits() {
    use std::process::Command;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("wasmjobs.toml"),
        "[queues.bulk]\nweight = 1\n\n[queues.reports]\npaused = true\n",
    )
    .expect("config");
    let db = dir.path().join("queues.db").display().to_string();
    let server = Process::serve(dir.path(), &db, &["--workers", "2"]);
    let url = server.url.clone();
    let http = reqwest::Client::new();
    upload(&http, &url, guests::TESTJOB, "testjob").await;

    let sleep =
        json!({"module": "testjob", "queue": "bulk", "input": {"mode": "sleep", "ms": 250}});
    let bulk = submit_all(&http, &url, vec![sleep; 40]).await;
    assert_eq!(bulk.len(), 40);
    wait_some_running(&http, &url).await;
    let quick = json!({"module": "testjob", "input": {"mode": "greet", "name": "q"}});
    let quick_ids = submit_all(&http, &url, vec![quick; 4]).await;
    assert_eq!(quick_ids.len(), 4);
    wait_all_final(&http, &url, &quick_ids, Duration::from_secs(60)).await;
    for &id in &quick_ids {
        let j = job(&http, &url, id).await;
        assert_eq!(
            (j["state"].as_str(), j["queue"].as_str()),
            (Some("succeeded"), Some("default")),
            "{j}"
        );
    }
    // 40 × 250 ms on two slots is 5 s of backlog: FIFO would have run all of it first.
    let list = queues(&http, &url).await;
    let b = queue(&list, "bulk");
    let waiting = b["queued"].as_u64().unwrap_or(0) + b["running"].as_u64().unwrap_or(0);
    assert!(waiting >= 25, "the quick jobs waited for the backlog: {b}");
    assert_eq!(job(&http, &url, bulk[0]).await["queue"], "bulk");
    let page: Value = http
        .get(format!("{url}/v1/jobs?queue=bulk&limit=5"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let listed = page["jobs"].as_array().cloned().unwrap_or_default();
    assert!(
        listed.len() == 5 && listed.iter().all(|j| j["queue"] == "bulk"),
        "{page}"
    );
    let r = http
        .get(format!("{url}/v1/jobs?queue=a%20b"))
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), 400);

    // A paused queue (declared so) keeps its job while the node runs others.
    let cli = |args: &[&str]| {
        Command::new(wasmjobs_tests::wasmjobs_bin())
            .args(args)
            .env("WASMJOBS_SERVER", &url)
            .output()
            .expect("run the CLI")
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let o = cli(&[
        "job",
        "submit",
        "testjob",
        "--queue",
        "reports",
        "--input",
        r#"{"mode":"greet","name":"r"}"#,
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let report: i64 = text(&o.stdout).trim().parse().expect("an id");
    let after = submit_all(
        &http,
        &url,
        vec![json!({"module": "testjob", "input": {"mode": "greet", "name": "a"}})],
    )
    .await;
    wait_all_final(&http, &url, &after, Duration::from_secs(60)).await;
    assert_eq!(job(&http, &url, report).await["state"], "queued");
    let o = cli(&["queue", "list"]);
    let listed = text(&o.stdout);
    let line = listed
        .lines()
        .find(|l| l.starts_with("reports"))
        .unwrap_or_default();
    assert!(
        listed.starts_with("QUEUE")
            && line.contains("yes")
            && line.split_whitespace().nth(1) == Some("1"),
        "{listed}"
    );
    let o = cli(&["queue", "resume", "reports"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    wait_for_state(
        &http,
        &format!("{url}/v1/jobs/{report}"),
        "succeeded",
        Duration::from_secs(30),
    )
    .await;
    let o = cli(&["-o", "json", "queue", "pause", "reports"]);
    let paused: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(paused["paused"], true, "{paused}");

    // Refusals name the problem.
    let o = cli(&["queue", "pause", "nowhere"]);
    assert!(
        !o.status.success() && text(&o.stderr).contains("unknown queue \"nowhere\""),
        "{}",
        text(&o.stderr)
    );
    let r = http
        .post(format!("{url}/v1/jobs"))
        .json(&json!({"module": "testjob", "queue": "no spaces", "input": {}}))
        .send()
        .await
        .expect("submit");
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    assert!(
        status.is_client_error() && body.contains("queue name"),
        "{status} {body}"
    );
    wait_all_final(&http, &url, &bulk, Duration::from_secs(120)).await;
}

/// Three nodes on one Postgres: `max_running = 2` is never exceeded however many slots are
/// free, and `rate = "10/s"` spaces the starts across the nodes (never more than the rate
/// plus one burst in any second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_rates_hold_across_three_nodes_postgres() {
    let Ok(pg) = std::env::var("WASMJOBS_TEST_POSTGRES") else {
        eprintln!(
            "SKIPPED: limits_and_rates_hold_across_three_nodes_postgres (set WASMJOBS_TEST_POSTGRES to run it)"
        );
        return;
    };
    let db = fresh_database(&pg, "queues");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("wasmjobs.toml"),
        "[queues.narrow]\nmax_running = 2\n\n[queues.metered]\nrate = \"10/s\"\n",
    )
    .expect("config");
    let http = reqwest::Client::new();
    let api = Process::serve(dir.path(), &db, &["--workers", "2"]);
    let url = api.url.clone();
    upload(&http, &url, guests::TESTJOB, "testjob").await;
    let w1 = Process::worker(dir.path(), &db, "w1");
    let w2 = Process::worker(dir.path(), &db, "w2");

    let narrow =
        json!({"module": "testjob", "queue": "narrow", "input": {"mode": "sleep", "ms": 200}});
    let metered =
        json!({"module": "testjob", "queue": "metered", "input": {"mode": "greet", "name": "m"}});
    let narrow_ids = submit_all(&http, &url, vec![narrow; 12]).await;
    let metered_ids = submit_all(&http, &url, vec![metered; 40]).await;
    assert_eq!((narrow_ids.len(), metered_ids.len()), (12, 40));
    let mut all = narrow_ids.clone();
    all.extend(&metered_ids);
    // The store's own count of the queue's running jobs, watched until everything ended.
    let mut most_running = 0;
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let list = queues(&http, &url).await;
        let n = queue(&list, "narrow");
        most_running = most_running.max(n["running"].as_u64().unwrap_or(0));
        let left: u64 = list
            .iter()
            .map(|q| {
                q["queued"].as_u64().unwrap_or(0)
                    + q["scheduled"].as_u64().unwrap_or(0)
                    + q["running"].as_u64().unwrap_or(0)
            })
            .sum();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < until, "jobs left after 120 s: {list:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        most_running, 2,
        "max_running = 2 across three nodes, six slots"
    );
    wait_all_final(&http, &url, &all, Duration::from_secs(30)).await;

    // Each attempt's (start, end, worker).
    let spans = |ids: Vec<i64>| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let mut out = Vec::new();
            for id in ids {
                let j = job(&http, &url, id).await;
                assert_eq!(j["state"], "succeeded", "{j}");
                for a in j["attempts"].as_array().into_iter().flatten() {
                    out.push((
                        a["started_at"].as_i64().expect("start"),
                        a["finished_at"].as_i64().expect("end"),
                        a["worker"].as_str().unwrap_or_default().to_string(),
                    ));
                }
            }
            out
        }
    };
    let narrow_spans = spans(narrow_ids).await;
    let metered_spans = spans(metered_ids).await;
    let mut starts: Vec<i64> = metered_spans.iter().map(|(s, _, _)| *s).collect();
    starts.sort_unstable();
    for (i, s) in starts.iter().enumerate() {
        let in_a_second = starts[i..].iter().take_while(|t| **t < s + 1000).count();
        assert!(
            in_a_second <= 20,
            "{in_a_second} starts within a second of {s}: {starts:?}"
        );
    }
    let span = starts.last().unwrap_or(&0) - starts.first().unwrap_or(&0);
    assert!(
        span >= 2_900,
        "40 starts at 10/s (burst 10) took only {span} ms"
    );
    let workers: std::collections::BTreeSet<&str> = narrow_spans
        .iter()
        .chain(&metered_spans)
        .map(|(_, _, w)| w.as_str())
        .collect();
    assert!(workers.len() >= 2, "one node ran everything: {workers:?}");
    drop((w1, w2, api));
    drop_database(&pg, &db);
}

/// Each attempt of jobs `ids`: (start, end, job), sorted by start.
async fn attempt_spans(http: &reqwest::Client, url: &str, ids: &[i64]) -> Vec<(i64, i64, i64)> {
    let mut out = Vec::new();
    for &id in ids {
        let j = job(http, url, id).await;
        assert_eq!(j["state"], "succeeded", "{j}");
        for a in j["attempts"].as_array().into_iter().flatten() {
            out.push((
                a["started_at"].as_i64().expect("start"),
                a["finished_at"].as_i64().expect("end"),
                id,
            ));
        }
    }
    out.sort_unstable();
    out
}

/// The most spans that overlap at once. A start and an end are readings of different nodes'
/// clocks (the claimer reads its clock before the end it follows is committed), so a span is
/// taken to end 20 ms early: a real overlap is most of a job's 150 ms.
fn most_at_once(spans: &[(i64, i64, i64)]) -> usize {
    spans
        .iter()
        .map(|(s, _, _)| {
            spans
                .iter()
                .filter(|(a, b, _)| a <= s && *s < b - 20)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Concurrency keys with the real binary: a key of limit 1 runs its jobs one at a time in the
/// order they were submitted, a key of limit 2 two at a time, and jobs without a key run
/// beside them at once; on Postgres with three nodes sharing the key.
async fn keys_hold(db: &str, dir: &std::path::Path, nodes: usize) {
    let http = reqwest::Client::new();
    let api = Process::serve(dir, db, &["--workers", "4"]);
    let url = api.url.clone();
    upload(&http, &url, guests::TESTJOB, "testjob").await;
    let workers: Vec<Process> = (1..nodes)
        .map(|k| Process::worker(dir, db, &format!("w{k}")))
        .collect();
    let sleep = |key: Option<(&str, u32)>| {
        let mut body = json!({"module": "testjob", "input": {"mode": "sleep", "ms": 150}});
        if let Some((key, limit)) = key {
            body["concurrency_key"] = json!(key);
            body["concurrency_limit"] = json!(limit);
        }
        body
    };
    // One at a time, so that their order is known.
    let mut serial = Vec::new();
    for _ in 0..10 {
        serial.extend(submit_all(&http, &url, vec![sleep(Some(("acct-1", 1)))]).await);
    }
    let last = job(&http, &url, serial[9]).await;
    assert_eq!(
        (&last["concurrency_key"], &last["concurrency_limit"]),
        (&json!("acct-1"), &json!(1)),
        "{last}"
    );
    assert_eq!(
        (&last["state"], &last["waiting_for_key"]),
        (&json!("queued"), &json!(true)),
        "the last of ten jobs of a key of limit 1 waits: {last}"
    );
    let pair = submit_all(&http, &url, vec![sleep(Some(("pair", 2))); 6]).await;
    let free = submit_all(&http, &url, vec![sleep(None); 6]).await;
    assert_eq!((serial.len(), pair.len(), free.len()), (10, 6, 6));
    let mut all = serial.clone();
    all.extend(&pair);
    all.extend(&free);
    wait_all_final(&http, &url, &all, Duration::from_secs(90)).await;

    let serial_spans = attempt_spans(&http, &url, &serial).await;
    assert_eq!(
        serial_spans
            .iter()
            .map(|(_, _, id)| *id)
            .collect::<Vec<_>>(),
        serial,
        "a key of limit 1 runs its jobs in the order they came: {serial_spans:?}"
    );
    // Each starts once the one before it ended (as in `most_at_once`, the times are different
    // nodes' clock readings).
    for w in serial_spans.windows(2) {
        assert!(
            w[1].0 >= w[0].1 - 20,
            "two jobs of a key of limit 1 ran at once: {w:?} in {serial_spans:?}"
        );
    }
    let pair_spans = attempt_spans(&http, &url, &pair).await;
    assert_eq!(
        most_at_once(&pair_spans),
        2,
        "a key of limit 2 ran more than two, or never two, at once: {pair_spans:?}"
    );
    // The keyless jobs did not wait behind the keys' waiting jobs.
    let free_spans = attempt_spans(&http, &url, &free).await;
    let last_free_end = free_spans.iter().map(|(_, e, _)| *e).max().unwrap_or(0);
    let last_serial_start = serial_spans.last().map_or(0, |(s, _, _)| *s);
    assert!(
        last_free_end < last_serial_start,
        "jobs without a key waited behind a key's jobs: {free_spans:?} against {serial_spans:?}"
    );
    // Every place was given back: the key's next job has one at once.
    let again = submit_all(&http, &url, vec![sleep(Some(("acct-1", 1)))]).await;
    let j = job(&http, &url, again[0]).await;
    assert_eq!(j["waiting_for_key"], false, "{j}");
    wait_all_final(&http, &url, &again, Duration::from_secs(30)).await;
    drop((workers, api));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_key_runs_its_jobs_one_at_a_time_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("keys.db").display().to_string();
    keys_hold(&db, dir.path(), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_key_holds_across_three_nodes_postgres() {
    let Ok(pg) = std::env::var("WASMJOBS_TEST_POSTGRES") else {
        eprintln!(
            "SKIPPED: a_concurrency_key_holds_across_three_nodes_postgres (set WASMJOBS_TEST_POSTGRES to run it)"
        );
        return;
    };
    let db = fresh_database(&pg, "keys");
    let dir = tempfile::tempdir().expect("tempdir");
    keys_hold(&db, dir.path(), 3).await;
    drop_database(&pg, &db);
}
