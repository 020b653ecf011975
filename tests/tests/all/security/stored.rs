//! What is stored stays bounded and valid: idempotency keys, policies, quotas, NUL characters, outputs, the module cache.

use super::*;

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
        assert_eq!(v["code"], "idempotency_key_reused", "{backend}: {v}");
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
        assert_eq!(v["code"], "compile_timeout", "{backend}: {v}");
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
