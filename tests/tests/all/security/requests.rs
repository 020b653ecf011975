//! Hostile requests and jobs: grant escapes, event floods, parser bombs, held connections, hijacked names, hidden grant values.

use super::*;

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
        // Pausing a queue steers everyone's jobs: admin's only too.
        let (status, v) = call(
            server.app(),
            "POST",
            "/v1/queues/default/pause",
            Body::empty(),
            alice,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{backend}: {v}");
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
