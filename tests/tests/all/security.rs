//! What a hostile API client or job author can do to the server around the sandbox, each on
//! both store backends where a store is involved: grants that would escape the allowed
//! directories, event floods, parser bombs, held connections, hijacked module names, squatted
//! idempotency keys, unbounded retry policies, upload floods, unstorable text. Each test
//! reproduces the attack and checks that it now fails to harm (docs/security.md).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;
use wasmjobs::admission::AdmissionPolicy;
use wasmjobs::caller::Caller;
use wasmjobs::http::{ApiConfig, ConnectionLimits, Scope, Token};
use wasmjobs::service::SubmitJob;
use wasmjobs_tests::{TestServer, guest_bytes, guests, test_stores};

async fn call(
    app: axum::Router,
    method: &str,
    uri: &str,
    body: Body,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let (status, bytes) = call_raw(app, method, uri, body, token).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn call_raw(
    app: axum::Router,
    method: &str,
    uri: &str,
    body: Body,
    token: Option<&str>,
) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = app
        .oneshot(req.body(body).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .expect("body");
    (status, bytes.to_vec())
}

async fn upload_as(server: &TestServer, wasm: &str, name: &str, token: Option<&str>) -> StatusCode {
    call(
        server.app(),
        "POST",
        &format!("/v1/modules?name={name}"),
        Body::from(guest_bytes(wasm)),
        token,
    )
    .await
    .0
}

async fn submit_as(server: &TestServer, body: &Value, token: Option<&str>) -> (StatusCode, Value) {
    call(
        server.app(),
        "POST",
        "/v1/jobs",
        Body::from(body.to_string()),
        token,
    )
    .await
}

async fn wait_final(server: &TestServer, id: i64, within: Duration) -> Value {
    let until = Instant::now() + within;
    loop {
        let (_, job) = call(
            server.app(),
            "GET",
            &format!("/v1/jobs/{id}"),
            Body::empty(),
            None,
        )
        .await;
        if ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap_or("")) {
            return job;
        }
        assert!(
            Instant::now() < until,
            "job {id} not final within {within:?}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}

/// A directory tree for grants: `allowed/` (the policy's one allowed directory) holding
/// `sub/in.txt`, and `secret/in.txt` beside it.
struct GrantDirs {
    _dir: tempfile::TempDir,
    allowed: std::path::PathBuf,
    secret: std::path::PathBuf,
}

fn grant_dirs() -> GrantDirs {
    let dir = tempfile::tempdir().expect("tempdir");
    let allowed = dir.path().join("allowed");
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(allowed.join("sub")).expect("mkdir");
    std::fs::create_dir_all(&secret).expect("mkdir");
    std::fs::write(allowed.join("sub/in.txt"), "allowed content").expect("write");
    std::fs::write(secret.join("in.txt"), "root:x:0:0:secret").expect("write");
    GrantDirs {
        _dir: dir,
        allowed,
        secret,
    }
}

fn files_job(host: &std::path::Path) -> Value {
    json!({
        "module": "testjob",
        "input": {"mode": "files"},
        "grants": {"dirs": [{"host": host, "guest": "/data"}]},
        "retry": {"max_attempts": 1},
    })
}

/// A grant must resolve inside an allowed directory: `..` and symlinks out are refused at
/// submission, and a directory swapped for a symlink after the job was admitted is refused
/// when the attempt opens it — the job never reads what lies outside.
#[tokio::test]
async fn grants_cannot_escape_the_allowed_directories() {
    for (backend, store, _db) in test_stores("sec_grants").await {
        let dirs = grant_dirs();
        let policy = AdmissionPolicy {
            allowed_dirs: vec![dirs.allowed.clone()],
            ..AdmissionPolicy::default()
        };
        let server = TestServer::start_with(
            store,
            ApiConfig::default(),
            1,
            policy,
            ConnectionLimits::default(),
        )
        .await;
        assert_eq!(
            upload_as(&server, guests::TESTJOB, "testjob", None).await,
            StatusCode::CREATED
        );

        let dotdot = dirs.allowed.join("../secret");
        let (status, v) = submit_as(&server, &files_job(&dotdot), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{backend}: {v}");
        assert!(message(&v).contains("`..`"), "{backend}: {v}");

        let link = dirs.allowed.join("link");
        std::os::unix::fs::symlink(&dirs.secret, &link).expect("symlink");
        let (status, v) = submit_as(&server, &files_job(&link), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{backend}: {v}");
        assert!(message(&v).contains("outside"), "{backend}: {v}");

        let (status, v) = submit_as(&server, &files_job(&dirs.allowed.join("sub")), None).await;
        assert_eq!(status, StatusCode::CREATED, "{backend}: {v}");
        let job = wait_final(
            &server,
            v["id"].as_i64().expect("id"),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(job["state"], "succeeded", "{backend}: {job}");
        assert_eq!(
            job["output"]["read"]["Ok"], "allowed content",
            "{backend}: {job}"
        );

        // Admitted while `swap` was a real directory, swapped for a symlink out before it ran.
        let swap = dirs.allowed.join("swap");
        std::fs::create_dir(&swap).expect("mkdir");
        let mut later = files_job(&swap);
        later["run_at"] = json!(wasmjobs::store::now_ms() + 1_500);
        let (status, v) = submit_as(&server, &later, None).await;
        assert_eq!(status, StatusCode::CREATED, "{backend}: {v}");
        std::fs::remove_dir(&swap).expect("rmdir");
        std::os::unix::fs::symlink(&dirs.secret, &swap).expect("symlink");
        let job = wait_final(
            &server,
            v["id"].as_i64().expect("id"),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(job["state"], "failed", "{backend}: {job}");
        let text = job.to_string();
        assert!(
            !text.contains("root:x"),
            "{backend}: the secret leaked: {job}"
        );
        assert!(
            job["error"].as_str().is_some_and(|e| e.contains("outside")),
            "{backend}: {job}"
        );
        server.stop().await;
    }
}

/// A million `report.progress` calls write a handful of rows, the latest value last, not a
/// row per call.
#[tokio::test]
async fn a_progress_flood_is_coalesced() {
    for (backend, store, _db) in test_stores("sec_progress").await {
        let server = TestServer::start(store.clone(), ApiConfig::default(), 1).await;
        upload_as(&server, guests::TESTJOB, "testjob", None).await;
        let (status, v) = submit_as(
            &server,
            &json!({"module": "testjob", "input": {"mode": "progressflood", "lines": 1_000_000}}),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        let id = v["id"].as_i64().expect("id");
        let job = wait_final(&server, id, Duration::from_secs(60)).await;
        assert_eq!(job["state"], "succeeded", "{backend}: {job}");
        let events = store.events(id, 0, 100_000).await.expect("events");
        let progress: Vec<&Value> = events
            .iter()
            .filter(|e| e.kind == "progress")
            .map(|e| &e.data)
            .collect();
        assert!(
            !progress.is_empty() && progress.len() <= 100,
            "{backend}: {} progress rows for a million calls",
            progress.len()
        );
        assert_eq!(
            progress.last().copied(),
            Some(&json!({"done": 1_000_000, "total": 1_000_000})),
            "{backend}: the latest value is kept"
        );
        server.stop().await;
    }
}

/// A 48 KB YAML alias bomb and 200 KB of nested brackets are refused with a 4xx that names
/// the limit, in milliseconds rather than seconds; so are too many nodes.
#[tokio::test]
async fn workflow_definition_bombs_are_refused_quickly() {
    let (_, store, _db) = test_stores("sec_yaml").await.remove(0);
    let server = TestServer::start(store, ApiConfig::default(), 0).await;
    upload_as(&server, guests::NOOP, "noop", None).await;
    let post = |body: String| {
        let app = server.app();
        async move {
            let started = Instant::now();
            let (status, v) = call(app, "POST", "/v1/workflows", Body::from(body), None).await;
            (status, v, started.elapsed())
        }
    };

    // One node with 2,000 needs under an anchor, then as many nodes as fit in 48 KB that
    // each need the same list by alias: millions of entries once expanded.
    let mut bomb =
        String::from("name: bomb\nnodes:\n  - name: a\n    module: noop\n    needs: &n\n");
    for i in 0..2000 {
        bomb.push_str(&format!("      - x{i}\n"));
    }
    let mut i = 0;
    while bomb.len() < 48_000 {
        bomb.push_str(&format!("  - {{name: b{i}, module: noop, needs: *n}}\n"));
        i += 1;
    }
    let (status, v, took) = post(bomb).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("budget"), "names the limit: {v}");
    assert!(took < Duration::from_secs(2), "took {took:?}");

    let deep = format!(
        "name: deep\nnodes: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (status, v, took) = post(deep).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        message(&v).contains("nest")
            || message(&v).contains("depth")
            || message(&v).contains("recursion"),
        "names the limit: {v}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");

    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"name": format!("n{i}"), "module": "noop"}))
        .collect();
    let (status, v, _) = post(json!({"name": "many", "nodes": many}).to_string()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(message(&v).contains("at most 1000"), "{v}");

    let huge = format!(
        "{{\"name\": \"huge\", \"description\": \"{}\", \"nodes\": []}}",
        "x".repeat(2 << 20)
    );
    let (status, v, _) = post(huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    server.stop().await;
}

/// A client that sends headers one at a time, or nothing at all, is disconnected after the
/// header-read timeout; with every connection slot held that way, the server still answers
/// once they are let go.
#[tokio::test]
async fn connections_cannot_be_held_before_authentication() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_, store, _db) = test_stores("sec_conn").await.remove(0);
    let limits = ConnectionLimits {
        max_connections: 4,
        header_read_timeout: Duration::from_secs(1),
        request_body_timeout: Duration::from_secs(1),
    };
    let tokens = vec![Token::from_secret("t", "secret", Scope::Read)];
    let server = TestServer::start_with(
        store,
        ApiConfig {
            tokens,
            ..ApiConfig::default()
        },
        0,
        AdmissionPolicy::default(),
        limits,
    )
    .await;
    let addr = server.url.trim_start_matches("http://").to_string();

    // One header a second: closed within the timeout, not after the last header.
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let started = Instant::now();
    slow.write_all(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut closed = false;
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        if slow
            .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await
            && n == 0
        {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a slow client is still connected after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A kept-alive connection that sends nothing after its request is closed as well.
    let mut kept = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), kept.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "an idle kept-alive connection stayed open");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Every slot taken by a connection that says nothing: a real client gets in once the
    // header-read timeout lets them go.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    let started = Instant::now();
    let resp = reqwest::Client::new()
        .get(format!("{}/healthz", server.url))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("healthz answers");
    assert_eq!(resp.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(idle);
    server.stop().await;
}

/// A module name set by one token can be moved only by that token or an admin; a submit token
/// cannot point a name another token uses at its own code (and so cannot make a schedule or a
/// workflow run it). Schedules are admin's; 403s do not name the token.
#[tokio::test]
async fn module_names_cannot_be_hijacked() {
    for (backend, store, _db) in test_stores("sec_names").await {
        let tokens = vec![
            Token::from_secret("alice", "alice-secret", Scope::Submit),
            Token::from_secret("mallory", "mallory-secret", Scope::Submit),
            Token::from_secret("root", "root-secret", Scope::Admin),
        ];
        let server = TestServer::start(
            store,
            ApiConfig {
                tokens,
                ..ApiConfig::default()
            },
            0,
        )
        .await;
        let (alice, mallory, root) = (
            Some("alice-secret"),
            Some("mallory-secret"),
            Some("root-secret"),
        );
        assert_eq!(
            upload_as(&server, guests::NOOP, "echo", alice).await,
            StatusCode::CREATED
        );
        let digest_of = |name: &str| {
            let app = server.app();
            let uri = format!("/v1/modules/{name}");
            async move {
                call(app, "GET", &uri, Body::empty(), Some("root-secret"))
                    .await
                    .1["digest"]
                    .clone()
            }
        };
        let noop = digest_of("echo").await;

        let (status, v) = call(
            server.app(),
            "POST",
            "/v1/modules?name=echo",
            Body::from(guest_bytes(guests::TESTJOB)),
            mallory,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{backend}: {v}");
        assert!(
            !message(&v).contains("mallory"),
            "a 403 names no token: {v}"
        );
        assert_eq!(
            digest_of("echo").await,
            noop,
            "{backend}: the name did not move"
        );
        // The same bytes again under the name: nothing moves, so it is fine.
        assert_eq!(
            upload_as(&server, guests::NOOP, "echo", mallory).await,
            StatusCode::OK
        );

        // Its owner may move it, and an admin may move anyone's.
        assert_eq!(
            upload_as(&server, guests::TESTJOB, "echo", alice).await,
            StatusCode::CREATED
        );
        assert_ne!(digest_of("echo").await, noop, "{backend}");
        assert_eq!(
            upload_as(&server, guests::NOOP, "echo", root).await,
            StatusCode::OK
        );
        assert_eq!(digest_of("echo").await, noop, "{backend}");
        // Now root's: alice may not move it back.
        assert_eq!(
            upload_as(&server, guests::TESTJOB, "echo", alice).await,
            StatusCode::FORBIDDEN
        );

        // Schedules run as the server for as long as they exist: admin's only.
        let schedule = json!({"cron": "0 * * * *", "job": {"module": "echo"}}).to_string();
        let (status, v) = call(
            server.app(),
            "POST",
            "/v1/schedules",
            Body::from(schedule.clone()),
            alice,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{backend}: {v}");
        assert!(
            message(&v).contains("admin") && !message(&v).contains("alice"),
            "{v}"
        );
        let (status, v) = call(
            server.app(),
            "POST",
            "/v1/schedules",
            Body::from(schedule),
            root,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{backend}: {v}");
        server.stop().await;
    }
}

/// Environment grant values are secrets: only admins see them, in jobs and in schedules.
#[tokio::test]
async fn read_tokens_never_see_grant_values() {
    for (backend, store, _db) in test_stores("sec_redact").await {
        let tokens = vec![
            Token::from_secret("viewer", "read-secret", Scope::Read),
            Token::from_secret("ci", "submit-secret", Scope::Submit),
            Token::from_secret("root", "root-secret", Scope::Admin),
        ];
        let policy = AdmissionPolicy {
            allowed_env: vec!["API_KEY".into()],
            ..AdmissionPolicy::default()
        };
        let server = TestServer::start_with(
            store,
            ApiConfig {
                tokens,
                ..ApiConfig::default()
            },
            0,
            policy,
            ConnectionLimits::default(),
        )
        .await;
        upload_as(&server, guests::NOOP, "noop", Some("root-secret")).await;
        let job = json!({"module": "noop", "grants": {"env": {"API_KEY": "hunter2"}}});
        let (status, v) = submit_as(&server, &job, Some("root-secret")).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        let uri = format!("/v1/jobs/{}", v["id"]);
        for (token, sees) in [
            ("read-secret", "<redacted>"),
            ("submit-secret", "<redacted>"),
            ("root-secret", "hunter2"),
        ] {
            let (_, raw) = call_raw(server.app(), "GET", &uri, Body::empty(), Some(token)).await;
            let v: Value = serde_json::from_slice(&raw).expect("json");
            assert_eq!(
                v["grants"]["env"]["API_KEY"], sees,
                "{backend} {token}: {v}"
            );
            if sees != "hunter2" {
                assert!(
                    !String::from_utf8_lossy(&raw).contains("hunter2"),
                    "{backend}"
                );
            }
        }
        let schedule = json!({"cron": "0 * * * *", "job": job}).to_string();
        let (status, v) = call(
            server.app(),
            "POST",
            "/v1/schedules",
            Body::from(schedule),
            Some("root-secret"),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        let (_, raw) = call_raw(
            server.app(),
            "GET",
            "/v1/schedules",
            Body::empty(),
            Some("read-secret"),
        )
        .await;
        let text = String::from_utf8_lossy(&raw);
        assert!(
            !text.contains("hunter2") && text.contains("<redacted>"),
            "{backend}: {text}"
        );
        server.stop().await;
    }
}

/// Idempotency keys are per token: two clients using the same key get two jobs, a key reused
/// with a different request is a 422, and no client can take a schedule's key for a tick.
#[tokio::test]
async fn idempotency_keys_are_scoped_and_checked() {
    for (backend, store, _db) in test_stores("sec_keys").await {
        let tokens = vec![
            Token::from_secret("alice", "alice-secret", Scope::Submit),
            Token::from_secret("bob", "bob-secret", Scope::Submit),
        ];
        let server = TestServer::start(
            store,
            ApiConfig {
                tokens,
                ..ApiConfig::default()
            },
            0,
        )
        .await;
        upload_as(&server, guests::NOOP, "noop", Some("alice-secret")).await;
        let job = json!({"module": "noop", "input": {"n": 1}, "idempotency_key": "nightly-1"});
        let (s1, a) = submit_as(&server, &job, Some("alice-secret")).await;
        let (s2, b) = submit_as(&server, &job, Some("bob-secret")).await;
        assert_eq!(
            (s1, s2),
            (StatusCode::CREATED, StatusCode::CREATED),
            "{backend}: {a} {b}"
        );
        assert_ne!(
            a["id"], b["id"],
            "{backend}: one client's key is not another's"
        );
        assert_eq!(
            a["idempotency_key"], "nightly-1",
            "{backend}: shown as sent"
        );

        let (status, again) = submit_as(&server, &job, Some("alice-secret")).await;
        assert_eq!(status, StatusCode::OK, "{backend}: {again}");
        assert_eq!(again["id"], a["id"]);
        let mut other = job.clone();
        other["input"] = json!({"n": 2});
        let (status, v) = submit_as(&server, &other, Some("alice-secret")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{backend}: {v}");
        assert_eq!(
            v["error"]["code"], "idempotency_key_reused",
            "{backend}: {v}"
        );
        assert!(message(&v).contains("input"), "{backend}: {v}");

        // A client that submits a schedule's tick key first does not take the tick.
        let service = &server.state.service;
        let squat = SubmitJob {
            module: "noop".into(),
            idempotency_key: Some("sys/schedule/1/1000".into()),
            run_at: Some(i64::MAX / 2),
            ..SubmitJob::default()
        };
        let caller = Caller {
            token: Some("bob".into()),
            scope: Scope::Submit,
        };
        let (squatter, _) = service.submit(squat, &caller).await.expect("submit");
        let tick = SubmitJob {
            module: "noop".into(),
            ..SubmitJob::default()
        };
        let (fired, created) = service.submit_scheduled(tick, 1, 1000).await.expect("tick");
        assert!(created, "{backend}: the tick made its own job");
        assert_ne!(fired.id, squatter.id, "{backend}");
        server.stop().await;
    }
}

/// Retry counts, backoffs and priorities have bounds, wherever a policy is stored: jobs,
/// schedules, workflow nodes.
#[tokio::test]
async fn stored_policies_are_bounded_and_validated() {
    for (backend, store, _db) in test_stores("sec_bounds").await {
        let server = TestServer::start(store, ApiConfig::default(), 0).await;
        upload_as(&server, guests::NOOP, "noop", None).await;
        for (job, says) in [
            (
                json!({"module": "noop", "retry": {"max_attempts": 4_294_967_295u64, "initial_backoff_ms": 0}}),
                "retry.max_attempts",
            ),
            (
                json!({"module": "noop", "retry": {"max_backoff_ms": "400d"}}),
                "retry.max_backoff_ms",
            ),
            (json!({"module": "noop", "priority": i64::MAX}), "priority"),
            (
                json!({"module": "noop", "limits": {"fuel": 1_000_000_000_000_000u64}}),
                "limits.fuel",
            ),
        ] {
            let (status, v) = submit_as(&server, &job, None).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{backend}: {job} -> {v}"
            );
            assert!(message(&v).contains(says), "{backend}: {v}");
        }
        for (job, says) in [
            (
                json!({"module": "noop", "retry": {"multiplier": -5}}),
                "multiplier",
            ),
            (json!({"module": "noop", "retry": {"jitter": 7}}), "jitter"),
            (
                json!({"module": "noop", "retry": {"retry_on": ["succeeded"]}}),
                "succeeded",
            ),
            (
                json!({"module": "noop", "limits": {"fuel": 1_000_000_000_000_000u64}}),
                "limits.fuel",
            ),
            (
                json!({"module": "noop", "grants": {"dirs": [{"host": "/", "guest": "/"}]}}),
                "grants.dirs",
            ),
        ] {
            let body = json!({"cron": "0 * * * *", "job": job}).to_string();
            let (status, v) = call(
                server.app(),
                "POST",
                "/v1/schedules",
                Body::from(body),
                None,
            )
            .await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{backend}: schedule {job} -> {v}"
            );
            assert!(message(&v).contains(says), "{backend}: {v}");
        }
        for (node, says) in [
            (
                json!({"name": "a", "module": "noop", "retry": {"jitter": 7}}),
                "jitter",
            ),
            (
                json!({"name": "a", "module": "noop", "retry": {"max_attempts": 0}}),
                "max_attempts",
            ),
            (
                json!({"name": "a", "module": "noop", "limits": {"fuel": 1_000_000_000_000_000u64}}),
                "limits.fuel",
            ),
        ] {
            let body = json!({"name": "bounded", "nodes": [node]}).to_string();
            let (status, v) = call(
                server.app(),
                "POST",
                "/v1/workflows",
                Body::from(body),
                None,
            )
            .await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{backend}: node {node} -> {v}"
            );
            assert!(message(&v).contains(says), "{backend}: {v}");
        }
        server.stop().await;
    }
}

/// A job admitted under a looser policy runs only if the policy in force allows it: when the
/// operator tightens a cap, the jobs already queued are held to it.
#[tokio::test]
async fn a_stored_job_is_checked_against_the_policy_in_force_when_it_runs() {
    for (backend, store, _db) in test_stores("sec_recheck").await {
        let loose = TestServer::start(store.clone(), ApiConfig::default(), 0).await;
        upload_as(&loose, guests::NOOP, "noop", None).await;
        let (status, v) = submit_as(
            &loose,
            &json!({"module": "noop", "limits": {"fuel": 50_000_000_000u64}, "retry": {"max_attempts": 1}}),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        loose.stop().await;

        let tight = AdmissionPolicy {
            max_fuel: 1_000_000_000,
            ..AdmissionPolicy::default()
        };
        let server = TestServer::start_with(
            store,
            ApiConfig::default(),
            1,
            tight,
            ConnectionLimits::default(),
        )
        .await;
        let job = wait_final(
            &server,
            v["id"].as_i64().expect("id"),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(job["state"], "failed", "{backend}: {job}");
        let error = job["error"].as_str().unwrap_or("");
        assert!(
            error.contains("admission policy") && error.contains("limits.fuel"),
            "{backend}: {job}"
        );
        server.stop().await;
    }
}

/// Uploads have a quota, and a module whose compile takes too long is refused.
#[tokio::test]
async fn uploads_have_a_quota_and_a_compile_deadline() {
    for (backend, store, _db) in test_stores("sec_quota").await {
        let server = TestServer::start(
            store.clone(),
            ApiConfig {
                max_modules: 2,
                ..ApiConfig::default()
            },
            0,
        )
        .await;
        assert_eq!(
            upload_as(&server, guests::NOOP, "a", None).await,
            StatusCode::CREATED
        );
        assert_eq!(
            upload_as(&server, guests::FLOW, "b", None).await,
            StatusCode::CREATED
        );
        let (status, v) = call(
            server.app(),
            "POST",
            "/v1/modules?name=c",
            Body::from(guest_bytes(guests::TESTJOB)),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{backend}: {v}");
        assert!(message(&v).contains("max_modules"), "{v}");
        assert_eq!(
            upload_as(&server, guests::NOOP, "a2", None).await,
            StatusCode::OK,
            "the same bytes again"
        );
        server.stop().await;

        let server = TestServer::start(
            store,
            ApiConfig {
                compile_timeout: Duration::from_millis(1),
                ..ApiConfig::default()
            },
            0,
        )
        .await;
        let (status, v) = call(
            server.app(),
            "POST",
            "/v1/modules?name=slow",
            Body::from(guest_bytes(guests::TESTJOB)),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{backend}: {v}");
        assert_eq!(v["error"]["code"], "compile_timeout", "{backend}: {v}");
        server.stop().await;
    }
}

/// A NUL character, which Postgres cannot store, gets a 4xx wherever a client sends it, and a
/// guest's NUL ends as an ordinary failed attempt (not a failed commit that re-runs the job).
#[tokio::test]
async fn nul_characters_are_refused_or_made_storable() {
    for (backend, store, _db) in test_stores("sec_nul").await {
        let server = TestServer::start(store, ApiConfig::default(), 1).await;
        upload_as(&server, guests::TESTJOB, "testjob", None).await;
        for job in [
            json!({"module": "test\u{0}job"}),
            json!({"module": "testjob", "idempotency_key": "k\u{0}"}),
            json!({"module": "testjob", "workflow_ref": "r\u{0}"}),
        ] {
            let (status, v) = submit_as(&server, &job, None).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{backend}: {job} -> {v}"
            );
            assert!(message(&v).contains("NUL"), "{backend}: {v}");
        }
        for uri in [
            "/v1/modules/a%00b",
            "/v1/jobs?module=a%00b",
            "/v1/workflows/w%00",
        ] {
            let (status, v) = call(server.app(), "GET", uri, Body::empty(), None).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{backend}: {uri} -> {v}");
        }
        let (status, _) = call(
            server.app(),
            "POST",
            "/v1/modules?name=a%00b",
            Body::from(guest_bytes(guests::NOOP)),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{backend}");

        let (_, v) = submit_as(
            &server,
            &json!({"module": "testjob", "input": {"mode": "nul"}, "retry": {"max_attempts": 1}}),
            None,
        )
        .await;
        let id = v["id"].as_i64().expect("id");
        let job = wait_final(&server, id, Duration::from_secs(30)).await;
        assert_eq!(job["state"], "failed", "{backend}: {job}");
        assert_eq!(job["attempt_count"], 1, "{backend}: ran once: {job}");
        assert!(
            job["error"]
                .as_str()
                .is_some_and(|e| e.contains("NUL \u{FFFD} in it")),
            "{backend}: {job}"
        );
        server.stop().await;
    }
}

/// A job's JSON output is passed through as stored — not parsed into a tree and printed
/// again — so its text reaches the client exactly, key order and number spelling included.
#[tokio::test]
async fn outputs_are_passed_through_not_reparsed() {
    for (backend, store, _db) in test_stores("sec_output").await {
        let server = TestServer::start(store, ApiConfig::default(), 1).await;
        upload_as(&server, guests::NOOP, "noop", None).await;
        let output = r#"{"zeta":1.50,"alpha":[1e3,2]}"#;
        let (_, v) = submit_as(
            &server,
            &json!({"module": "noop", "input_base64": base64_of(output.as_bytes())}),
            None,
        )
        .await;
        let id = v["id"].as_i64().expect("id");
        wait_final(&server, id, Duration::from_secs(30)).await;
        let (_, raw) = call_raw(
            server.app(),
            "GET",
            &format!("/v1/jobs/{id}"),
            Body::empty(),
            None,
        )
        .await;
        let text = String::from_utf8_lossy(&raw);
        assert!(
            text.contains(&format!("\"output\":{output}")),
            "{backend}: {text}"
        );
        server.stop().await;
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A node keeps only so many compiled modules in memory, dropping the least recently used.
#[tokio::test]
async fn compiled_modules_in_memory_are_bounded() {
    let sandbox =
        wasmjobs_host::Sandbox::new(&wasmjobs_host::SandboxConfig::default()).expect("sandbox");
    let modules = wasmjobs::scheduler::ModuleCache::new(None).max_loaded(2);
    for (digest, wasm) in [
        ("a", guests::NOOP),
        ("b", guests::FLOW),
        ("c", guests::TESTJOB),
    ] {
        modules
            .insert(&sandbox, digest, guest_bytes(wasm))
            .await
            .expect("compiles");
        if digest == "b" {
            assert!(
                modules.loaded("a").is_some(),
                "a is used again: b is now the oldest"
            );
        }
    }
    assert_eq!(modules.loaded_count(), 2);
    assert!(
        modules.loaded("b").is_none(),
        "the least recently used went"
    );
    assert!(modules.loaded("a").is_some() && modules.loaded("c").is_some());
}
