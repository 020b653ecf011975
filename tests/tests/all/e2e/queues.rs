//! Queues with the real binary: fair shares against a backlog, pause and resume from the CLI,
//! and `max_running` and `rate` held across three nodes on one Postgres.

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
