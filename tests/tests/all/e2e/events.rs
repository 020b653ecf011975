//! Events out, end to end with the real binary: webhook deliveries signed and retried through
//! a receiver's failures, kept across `kill -9`, dead and redelivered by hand; and every state
//! change published to NATS JetStream once per message id across `kill -9`.

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;

use super::*;

/// One call a receiver got.
#[derive(Debug, Clone)]
struct Call {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    body: Value,
    /// The body as sent.
    raw: Vec<u8>,
    /// What the receiver answered.
    status: u16,
}

/// A webhook receiver on a loopback port: it answers 503 to the first `fail_first` calls,
/// then `answer` (200 unless set).
#[derive(Clone, Default)]
struct Receiver {
    calls: Arc<Mutex<Vec<Call>>>,
    fail_first: Arc<AtomicUsize>,
    answer: Arc<AtomicU16>,
    url: String,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let r = Receiver {
            url: format!("http://{}", listener.local_addr().expect("addr")),
            ..Receiver::default()
        };
        r.answer.store(200, Ordering::SeqCst);
        let state = r.clone();
        let app = axum::Router::new().fallback(axum::routing::post(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    let failing = state
                        .fail_first
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    let status = if failing {
                        503
                    } else {
                        state.answer.load(Ordering::SeqCst)
                    };
                    state.calls.lock().expect("calls").push(Call {
                        path: uri.path().to_string(),
                        id: h("webhook-id"),
                        timestamp: h("webhook-timestamp"),
                        signature: h("webhook-signature"),
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        raw: body.to_vec(),
                        status,
                    });
                    axum::http::StatusCode::from_u16(status)
                        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
                }
            },
        ));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        r
    }

    fn calls(&self, path: &str) -> Vec<Call> {
        self.calls
            .lock()
            .expect("calls")
            .iter()
            .filter(|c| c.path == path)
            .cloned()
            .collect()
    }

    /// The event ids accepted (2xx) on `path`.
    fn accepted(&self, path: &str) -> Vec<String> {
        self.calls(path)
            .into_iter()
            .filter(|c| (200..300).contains(&c.status))
            .map(|c| c.id)
            .collect()
    }

    /// Waits until `path` accepted `n` distinct events.
    async fn wait_accepted(&self, path: &str, n: usize, within: Duration) {
        let until = Instant::now() + within;
        loop {
            let mut got = self.accepted(path);
            got.sort();
            got.dedup();
            if got.len() >= n {
                return;
            }
            assert!(
                Instant::now() < until,
                "{path}: {} of {n} events accepted within {within:?}; calls: {:?}",
                got.len(),
                self.calls(path)
                    .iter()
                    .map(|c| (&c.id, c.status))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Checks a call's signature with the webhook's secret, as a receiver would.
fn check_signature(c: &Call, secret: &str) {
    let ts: i64 = c.timestamp.parse().expect("webhook-timestamp is seconds");
    assert!(
        (wasmjobs::store::now_ms() / 1000 - ts).abs() < 300,
        "timestamp {ts} is not now"
    );
    let want = wasmjobs::events::sign(secret, &c.id, ts, &c.raw).expect("sign");
    assert!(
        c.signature.split(' ').any(|s| s == want),
        "call {}: signature {:?} is not {want:?}",
        c.id,
        c.signature
    );
}

async fn add_webhook(http: &reqwest::Client, url: &str, body: Value) -> (i64, String) {
    let r = http
        .post(format!("{url}/v1/webhooks"))
        .json(&body)
        .send()
        .await
        .expect("webhook");
    assert_eq!(r.status(), 201, "{body}");
    let v: Value = r.json().await.expect("json");
    (
        v["id"].as_i64().expect("id"),
        v["secret"].as_str().expect("secret").to_string(),
    )
}

async fn deliveries(http: &reqwest::Client, url: &str, webhook: i64, query: &str) -> Vec<Value> {
    let v: Value = http
        .get(format!(
            "{url}/v1/webhooks/{webhook}/deliveries?limit=1000{query}"
        ))
        .send()
        .await
        .expect("deliveries")
        .json()
        .await
        .expect("json");
    v["deliveries"].as_array().cloned().unwrap_or_default()
}

const TEST_CONFIG: &str = "[webhooks]\nallow_private_targets = true\nretry_delay = \"100ms\"\n";

/// Every end of 30 jobs reaches a receiver that fails its first 4 calls, each call signed
/// with the webhook's secret; a second webhook filtered by module and type gets only its
/// jobs' failures; the deliveries' listing shows the failed calls. With `worker`, a second
/// node sends deliveries too, and still each event is accepted once.
async fn webhooks_deliver_every_end(db: &str, dir: &std::path::Path, worker: bool) {
    std::fs::write(dir.join("wasmjobs.toml"), TEST_CONFIG).expect("config");
    let http = reqwest::Client::new();
    let server = Process::serve(dir, db, &["--workers", "2"]);
    let _worker = worker.then(|| Process::worker(dir, db, "w1"));
    upload(&http, &server.url, guests::NOOP, "noop").await;
    upload(&http, &server.url, guests::TESTJOB, "testjob").await;
    let receiver = Receiver::start().await;
    receiver.fail_first.store(4, Ordering::SeqCst);
    let (ends, secret) = add_webhook(
        &http,
        &server.url,
        json!({"url": format!("{}/ends", receiver.url), "events": ["job.succeeded", "job.failed"], "include_output": true}),
    )
    .await;
    let (_failures, failures_secret) = add_webhook(
        &http,
        &server.url,
        json!({"url": format!("{}/failed", receiver.url), "events": ["job.failed"], "module": "testjob"}),
    )
    .await;
    let bodies = (0..30)
        .map(|i| {
            if i % 3 == 0 {
                json!({"module": "testjob", "input": {"mode": "fail"}, "retry": {"max_attempts": 1}})
            } else {
                json!({"module": "noop", "input": {"n": i}})
            }
        })
        .collect();
    let ids = submit_all(&http, &server.url, bodies).await;
    assert_eq!(ids.len(), 30);
    wait_all_final(&http, &server.url, &ids, Duration::from_secs(60)).await;
    receiver
        .wait_accepted("/ends", 30, Duration::from_secs(30))
        .await;
    receiver
        .wait_accepted("/failed", 10, Duration::from_secs(30))
        .await;

    let mut seen = std::collections::HashMap::new();
    for c in receiver.calls("/ends") {
        check_signature(&c, &secret);
        assert_eq!(c.body["id"], c.id, "{:?}", c.body);
        if (200..300).contains(&c.status) {
            seen.insert(
                c.body["data"]["id"].as_i64().expect("job id"),
                c.body.clone(),
            );
        }
    }
    for &id in &ids {
        let j = job(&http, &server.url, id).await;
        let body = seen
            .get(&id)
            .unwrap_or_else(|| panic!("job {id}: no event delivered"));
        assert_eq!(
            body["type"],
            format!("job.{}", j["state"].as_str().unwrap_or(""))
        );
        assert_eq!(body["data"]["state"], j["state"]);
        assert_eq!(body["data"]["kind"], "job");
        if j["state"] == "succeeded" {
            assert_eq!(body["data"]["output"], j["output"], "job {id}: {body}");
        } else {
            assert!(
                body["data"]["error"]
                    .as_str()
                    .is_some_and(|e| !e.is_empty()),
                "job {id}: {body}"
            );
        }
    }
    let mut accepted = receiver.accepted("/ends");
    accepted.sort();
    let n = accepted.len();
    accepted.dedup();
    assert_eq!(n, accepted.len(), "an event was accepted twice");
    let failed = receiver.calls("/failed");
    for c in &failed {
        check_signature(c, &failures_secret);
        assert_eq!(c.body["type"], "job.failed", "{:?}", c.body);
    }
    assert!(failed.len() >= 10, "{failed:?}");

    // The 4 failed calls are in the listing, each followed by a success.
    let listed = deliveries(&http, &server.url, ends, "").await;
    assert_eq!(listed.len(), 30, "{listed:?}");
    assert!(
        listed.iter().all(|d| d["state"] == "delivered"),
        "{listed:?}"
    );
    let calls: Vec<&Value> = listed
        .iter()
        .flat_map(|d| d["calls"].as_array().into_iter().flatten())
        .collect();
    let refused = calls.iter().filter(|c| c["status"] == 503).count();
    assert!(refused >= 1, "no failed call listed: {listed:?}");
    assert!(
        calls
            .iter()
            .filter(|c| c["status"] == 503)
            .all(|c| c["error"].as_str().is_some_and(|e| e.contains("HTTP 503"))),
        "{calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_deliver_every_end_signed_through_failures_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("jobs.db").display().to_string();
    webhooks_deliver_every_end(&db, dir.path(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_deliver_every_end_signed_through_failures_postgres() {
    let Ok(pg) = std::env::var("WASMJOBS_TEST_POSTGRES") else {
        eprintln!(
            "SKIPPED: webhooks_deliver_every_end_signed_through_failures_postgres (set WASMJOBS_TEST_POSTGRES to run it)"
        );
        return;
    };
    let db = fresh_database(&pg, "hooks");
    let dir = tempfile::tempdir().expect("tempdir");
    webhooks_deliver_every_end(&db, dir.path(), true).await;
    drop_database(&pg, &db);
}

/// Deliveries that failed before a `kill -9` of the server are made after its restart, with
/// the event ids they had.
async fn deliveries_survive_kill_9(db: &str, dir: &std::path::Path) {
    std::fs::write(dir.join("wasmjobs.toml"), TEST_CONFIG).expect("config");
    let http = reqwest::Client::new();
    let mut server = Process::serve(dir, db, &["--workers", "2"]);
    upload(&http, &server.url, guests::NOOP, "noop").await;
    let receiver = Receiver::start().await;
    receiver.fail_first.store(usize::MAX, Ordering::SeqCst);
    add_webhook(
        &http,
        &server.url,
        json!({"url": format!("{}/in", receiver.url), "events": ["job.*"]}),
    )
    .await;
    let ids = submit_all(
        &http,
        &server.url,
        (0..5)
            .map(|i| json!({"module": "noop", "input": {"n": i}}))
            .collect(),
    )
    .await;
    wait_all_final(&http, &server.url, &ids, Duration::from_secs(30)).await;
    // Each job's end was tried and refused: its delivery is pending, due again.
    let until = Instant::now() + Duration::from_secs(20);
    while receiver
        .calls("/in")
        .iter()
        .filter(|c| c.body["type"] == "job.succeeded")
        .map(|c| c.id.clone())
        .collect::<std::collections::HashSet<_>>()
        .len()
        < 5
    {
        assert!(
            Instant::now() < until,
            "the ends were not tried before the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill9();
    let tried: std::collections::HashSet<String> =
        receiver.calls("/in").into_iter().map(|c| c.id).collect();
    receiver.fail_first.store(0, Ordering::SeqCst);
    server = Process::serve(dir, db, &["--workers", "2"]);
    // Per job: queued, running, succeeded.
    receiver
        .wait_accepted("/in", 15, Duration::from_secs(30))
        .await;
    let accepted: std::collections::HashSet<String> =
        receiver.accepted("/in").into_iter().collect();
    assert!(
        tried.is_subset(&accepted),
        "events tried before the kill and never delivered after it: {:?}",
        tried.difference(&accepted).collect::<Vec<_>>()
    );
    for &id in &ids {
        let states: Vec<String> = receiver
            .calls("/in")
            .iter()
            .filter(|c| c.status == 200 && c.body["data"]["id"] == id)
            .filter_map(|c| c.body["data"]["state"].as_str().map(str::to_string))
            .collect();
        for s in ["queued", "running", "succeeded"] {
            assert!(states.iter().any(|x| x == s), "job {id}: {states:?}");
        }
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_deliveries_survive_kill_9_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("jobs.db").display().to_string();
    deliveries_survive_kill_9(&db, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_deliveries_survive_kill_9_postgres() {
    let Ok(pg) = std::env::var("WASMJOBS_TEST_POSTGRES") else {
        eprintln!(
            "SKIPPED: webhook_deliveries_survive_kill_9_postgres (set WASMJOBS_TEST_POSTGRES to run it)"
        );
        return;
    };
    let db = fresh_database(&pg, "hookkill");
    let dir = tempfile::tempdir().expect("tempdir");
    deliveries_survive_kill_9(&db, dir.path()).await;
    drop_database(&pg, &db);
}

/// A server with `[webhooks]` settings `extra` besides fast retries, on `db` (a SQLite file
/// in its directory when `None`), a webhook on `job.succeeded` to a receiver that answers
/// 500, and one job that succeeded.
async fn failing_webhook(
    extra: &str,
    db: Option<&str>,
) -> (tempfile::TempDir, Process, Receiver, i64) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("wasmjobs.toml"),
        format!("{TEST_CONFIG}{extra}\n"),
    )
    .expect("config");
    let db = db.map_or_else(
        || dir.path().join("jobs.db").display().to_string(),
        str::to_string,
    );
    let http = reqwest::Client::new();
    let server = Process::serve(dir.path(), &db, &["--workers", "1"]);
    upload(&http, &server.url, guests::NOOP, "noop").await;
    let receiver = Receiver::start().await;
    receiver.answer.store(500, Ordering::SeqCst);
    let (hook, _) = add_webhook(
        &http,
        &server.url,
        json!({"url": format!("{}/in", receiver.url), "events": ["job.succeeded"]}),
    )
    .await;
    let ids = submit_all(
        &http,
        &server.url,
        vec![json!({"module": "noop", "input": 1})],
    )
    .await;
    wait_all_final(&http, &server.url, &ids, Duration::from_secs(30)).await;
    (dir, server, receiver, hook)
}

/// The newest delivery of `hook` in `state`, once there is one (within 20 s).
async fn first_delivery(http: &reqwest::Client, url: &str, hook: i64, state: &str) -> Value {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(d) = deliveries(http, url, hook, &format!("&state={state}"))
            .await
            .first()
        {
            return d.clone();
        }
        assert!(Instant::now() < until, "no delivery is {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A delivery whose retry period ends is dead, and is sent again, with its event id, by
/// `wasmjobs webhook redeliver`; a 410 is not retried at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_delivery_is_redelivered_by_hand() {
    let (_dir, server, receiver, hook) = failing_webhook("retry_for = \"1s\"", None).await;
    let http = reqwest::Client::new();
    let dead = first_delivery(&http, &server.url, hook, "dead").await;
    let calls = dead["calls"].as_array().cloned().unwrap_or_default();
    assert!(calls.len() >= 2, "retried before it died: {dead}");
    assert!(
        calls
            .iter()
            .all(|c| c["status"] == 500
                && c["error"].as_str().is_some_and(|e| e.contains("HTTP 500"))),
        "{dead}"
    );
    receiver.answer.store(200, Ordering::SeqCst);
    let out = std::process::Command::new(wasmjobs_tests::wasmjobs_bin())
        .args([
            "webhook",
            "redeliver",
            &hook.to_string(),
            &dead["id"].to_string(),
            "--server",
            &server.url,
        ])
        .output()
        .expect("wasmjobs webhook redeliver");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    receiver
        .wait_accepted("/in", 1, Duration::from_secs(10))
        .await;
    assert_eq!(
        receiver.accepted("/in"),
        vec![dead["event_id"].as_str().unwrap_or("").to_string()]
    );
    let until = Instant::now() + Duration::from_secs(10);
    while deliveries(&http, &server.url, hook, "&state=delivered")
        .await
        .len()
        != 1
    {
        assert!(
            Instant::now() < until,
            "the redelivery is not recorded delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A 410 says the receiver is gone: the delivery is dead at its first call.
    receiver.answer.store(410, Ordering::SeqCst);
    let ids = submit_all(
        &http,
        &server.url,
        vec![json!({"module": "noop", "input": 2})],
    )
    .await;
    wait_all_final(&http, &server.url, &ids, Duration::from_secs(30)).await;
    let gone = first_delivery(&http, &server.url, hook, "dead").await;
    assert_eq!(gone["calls"].as_array().map(Vec::len), Some(1), "{gone}");
    assert!(
        gone["calls"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("HTTP 410") && e.contains("not retried")),
        "{gone}"
    );
    let listed = std::process::Command::new(wasmjobs_tests::wasmjobs_bin())
        .args([
            "webhook",
            "deliveries",
            &hook.to_string(),
            "--state",
            "dead",
            "--server",
            &server.url,
        ])
        .output()
        .expect("wasmjobs webhook deliveries");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success() && text.contains("HTTP 410"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_failing_too_long_is_disabled_and_says_why_sqlite() {
    failing_too_long(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_failing_too_long_is_disabled_and_says_why_postgres() {
    let Ok(pg) = std::env::var("WASMJOBS_TEST_POSTGRES") else {
        eprintln!(
            "SKIPPED: a_webhook_failing_too_long_is_disabled_and_says_why_postgres (set WASMJOBS_TEST_POSTGRES to run it)"
        );
        return;
    };
    let db = fresh_database(&pg, "hookoff");
    failing_too_long(Some(&db)).await;
    drop_database(&pg, &db);
}

/// A webhook whose every delivery fails for longer than `disable_after` is disabled, and
/// says why; enabled again, it delivers what was pending.
async fn failing_too_long(db: Option<&str>) {
    let (_dir, server, receiver, hook) = failing_webhook("disable_after = \"1s\"", db).await;
    let http = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(20);
    let disabled = loop {
        let w: Value = http
            .get(format!("{}/v1/webhooks/{hook}", server.url))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if w["enabled"] == false {
            break w;
        }
        assert!(Instant::now() < until, "not disabled: {w}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let why = disabled["disabled_reason"].as_str().unwrap_or("");
    assert!(
        why.contains("failed") && why.contains("HTTP 500"),
        "{disabled}"
    );
    // Disabled, nothing more is sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = receiver.calls("/in").len();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        receiver.calls("/in").len(),
        calls,
        "a disabled webhook was called"
    );
    assert_eq!(
        deliveries(&http, &server.url, hook, "&state=pending")
            .await
            .len(),
        1
    );

    receiver.answer.store(200, Ordering::SeqCst);
    let out = std::process::Command::new(wasmjobs_tests::wasmjobs_bin())
        .args([
            "webhook",
            "enable",
            &hook.to_string(),
            "--server",
            &server.url,
            "-o",
            "json",
        ])
        .output()
        .expect("wasmjobs webhook enable");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let enabled: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(enabled["enabled"], true);
    assert!(enabled["disabled_reason"].is_null(), "{enabled}");
    receiver
        .wait_accepted("/in", 1, Duration::from_secs(20))
        .await;
}

/// Without `[webhooks] allow_private_targets`, the server refuses webhooks to loopback,
/// private and link-local addresses, and the CLI says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_private_webhook_targets_by_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("jobs.db").display().to_string();
    let http = reqwest::Client::new();
    let server = Process::serve(dir.path(), &db, &["--workers", "1"]);
    let out = std::process::Command::new(wasmjobs_tests::wasmjobs_bin())
        .args([
            "webhook",
            "add",
            "http://127.0.0.1:9/hook",
            "--events",
            "job.*",
            "--server",
            &server.url,
        ])
        .output()
        .expect("wasmjobs webhook add");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a loopback target was taken");
    assert!(stderr.contains("allow_private_targets"), "{stderr}");
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.7/",
        "http://[::1]/",
    ] {
        let r = http
            .post(format!("{}/v1/webhooks", server.url))
            .json(&json!({"url": url, "events": ["job.*"]}))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 422, "{url}");
    }
    let listed: Value = http
        .get(format!("{}/v1/webhooks", server.url))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["webhooks"], json!([]));
}

/// Workflow runs send their events too: a webhook on `run.*` filtered by workflow gets its
/// runs' start and end, one on `job.succeeded` with the same filter gets each node's job with
/// the run's id, and another workflow's run reaches neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_runs_send_their_events_and_their_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("wasmjobs.toml"), TEST_CONFIG).expect("config");
    let db = dir.path().join("jobs.db").display().to_string();
    let http = reqwest::Client::new();
    let server = Process::serve(dir.path(), &db, &["--workers", "2"]);
    upload(&http, &server.url, guests::FLOW, "flow").await;
    let receiver = Receiver::start().await;
    let (_, secret) = add_webhook(
        &http,
        &server.url,
        json!({"url": format!("{}/runs", receiver.url), "events": ["run.*"], "workflow": "etl"}),
    )
    .await;
    add_webhook(
        &http,
        &server.url,
        json!({"url": format!("{}/jobs", receiver.url), "events": ["job.succeeded"], "workflow": "etl"}),
    )
    .await;
    let mut runs = Vec::new();
    for name in ["etl", "other"] {
        let definition = json!({ "name": name, "nodes": [
            { "name": "a", "module": "flow" },
            { "name": "b", "module": "flow", "needs": ["a"] },
        ]});
        let r = http
            .post(format!("{}/v1/workflows", server.url))
            .json(&definition)
            .send()
            .await
            .expect("define");
        assert!(r.status().is_success(), "define {name}: {}", r.status());
        let run: Value = http
            .post(format!("{}/v1/workflows/{name}/runs", server.url))
            .json(&json!({"input": {"n": 1}}))
            .send()
            .await
            .expect("start")
            .json()
            .await
            .expect("json");
        runs.push(run["id"].as_i64().expect("run id"));
    }
    for run in &runs {
        wait_for_state(
            &http,
            &format!("{}/v1/workflow-runs/{run}", server.url),
            "succeeded",
            Duration::from_secs(60),
        )
        .await;
    }
    receiver
        .wait_accepted("/runs", 2, Duration::from_secs(20))
        .await;
    receiver
        .wait_accepted("/jobs", 2, Duration::from_secs(20))
        .await;
    // Whatever else was going to arrive has.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let run_calls = receiver.calls("/runs");
    let mut types: Vec<String> = run_calls
        .iter()
        .map(|c| c.body["type"].as_str().unwrap_or("").to_string())
        .collect();
    types.sort();
    types.dedup();
    assert_eq!(types, ["run.running", "run.succeeded"], "{run_calls:?}");
    for c in &run_calls {
        check_signature(c, &secret);
        assert_eq!(c.body["data"]["id"], runs[0], "{:?}", c.body);
        assert_eq!(c.body["data"]["workflow"], "etl");
    }
    let job_calls = receiver.calls("/jobs");
    let mut jobs: Vec<i64> = job_calls
        .iter()
        .filter_map(|c| c.body["data"]["id"].as_i64())
        .collect();
    jobs.sort();
    jobs.dedup();
    assert_eq!(jobs.len(), 2, "{job_calls:?}");
    assert!(
        job_calls
            .iter()
            .all(|c| c.body["data"]["run"] == runs[0] && c.body["data"]["workflow"] == "etl"),
        "{job_calls:?}"
    );
}

/// 1,000 jobs with a `kill -9` of the server in the middle: the stream holds each job's state
/// changes once per message id, in the order of the job's history.
async fn nats_gets_every_state_change_once(db: &str, dir: &std::path::Path, tag: &str) {
    const JOBS: usize = 1000;
    let nats_url = "nats://127.0.0.1:4222";
    let prefix = format!("wjtest{tag}{}", std::process::id());
    let stream = prefix.to_uppercase();
    std::fs::write(
        dir.join("wasmjobs.toml"),
        format!("lease = \"30s\"\n[events]\nnats = \"{nats_url}\"\nsubject_prefix = \"{prefix}\"\nnats_stream = \"{stream}\"\n"),
    )
    .expect("config");
    let http = reqwest::Client::new();
    let mut server = Process::serve(dir, db, &["--workers", "2"]);
    upload(&http, &server.url, guests::NOOP, "noop").await;
    upload(&http, &server.url, guests::TESTJOB, "testjob").await;
    let bodies: Vec<Value> = (0..JOBS)
        .map(|i| {
            if i % 4 == 0 {
                json!({"module": "testjob", "input": {"mode": "sleep", "ms": 20}})
            } else {
                json!({"module": "noop", "input": {"n": i}})
            }
        })
        .collect();
    let ids = submit_all(&http, &server.url, bodies[..JOBS / 2].to_vec()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill9();
    server = Process::serve(dir, db, &["--workers", "2"]);
    let mut ids = ids;
    ids.extend(submit_all(&http, &server.url, bodies[JOBS / 2..].to_vec()).await);
    assert_eq!(ids.len(), JOBS);
    wait_all_final(&http, &server.url, &ids, Duration::from_secs(120)).await;

    let client = async_nats::connect(nats_url).await.expect("NATS");
    let js = async_nats::jetstream::new(client);
    // Read the stream until it holds every job's end (the publisher may still be at work).
    let until = Instant::now() + Duration::from_secs(60);
    let messages = loop {
        let messages = read_stream(&js, &stream).await;
        let ends = messages
            .iter()
            .filter(|(_, subject, _)| {
                subject.ends_with(".succeeded") || subject.ends_with(".failed")
            })
            .count();
        if ends >= JOBS || Instant::now() > until {
            break messages;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let _ = js.delete_stream(&stream).await;
    let mut ids_seen = std::collections::HashSet::new();
    let mut by_job: std::collections::HashMap<i64, Vec<String>> = Default::default();
    for (msg_id, subject, body) in &messages {
        assert!(
            ids_seen.insert(msg_id.clone()),
            "message id {msg_id} twice in the stream"
        );
        assert_eq!(body["id"], *msg_id);
        let state = body["data"]["state"].as_str().unwrap_or("").to_string();
        assert_eq!(
            *subject,
            format!(
                "{prefix}.{}.{state}",
                body["data"]["kind"].as_str().unwrap_or("")
            )
        );
        if body["data"]["kind"] == "job" {
            by_job
                .entry(body["data"]["id"].as_i64().unwrap_or(0))
                .or_default()
                .push(state);
        }
    }
    let mut lost = 0;
    for &id in &ids {
        let history: Vec<String> = events(&http, &server.url, id)
            .await
            .into_iter()
            .filter(|(_, e, _)| e == "state")
            .filter_map(|(_, _, d)| d["state"].as_str().map(str::to_string))
            .collect();
        let published = by_job.get(&id).cloned().unwrap_or_default();
        lost += usize::from(history.len() > 3);
        assert_eq!(
            published, history,
            "job {id}: published states against its history"
        );
    }
    eprintln!(
        "NATS: {} messages for {JOBS} jobs, {lost} of which ran again after the kill",
        messages.len()
    );
}

/// Every message of `stream`, in order: its `Nats-Msg-Id`, subject and body.
async fn read_stream(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Vec<(String, String, Value)> {
    use async_nats::jetstream::consumer;
    let s = js.get_stream(stream).await.expect("the stream exists");
    let consumer = s
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .expect("consumer");
    let mut out = Vec::new();
    let mut messages = consumer.messages().await.expect("messages");
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(2), messages.next()).await
    {
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        out.push((
            id,
            m.subject.to_string(),
            serde_json::from_slice(&m.payload).unwrap_or(Value::Null),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_gets_every_state_change_once_across_kill_9_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("jobs.db").display().to_string();
    nats_gets_every_state_change_once(&db, dir.path(), "s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_gets_every_state_change_once_across_kill_9_postgres() {
    let Ok(pg) = std::env::var("WASMJOBS_TEST_POSTGRES") else {
        eprintln!(
            "SKIPPED: nats_gets_every_state_change_once_across_kill_9_postgres (set WASMJOBS_TEST_POSTGRES to run it)"
        );
        return;
    };
    let db = fresh_database(&pg, "nats");
    let dir = tempfile::tempdir().expect("tempdir");
    nats_gets_every_state_change_once(&db, dir.path(), "p").await;
    drop_database(&pg, &db);
}
