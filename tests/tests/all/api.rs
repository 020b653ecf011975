//! The HTTP API on both store backends: through `app()` + `oneshot` (no socket) for every kind
//! of bad request, and on a real loopback socket with a worker node for the job lifecycle and
//! Server-Sent Events.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::StreamExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use wasmjobs::http::{ApiConfig, Scope, Token};
use wasmjobs::store::JobState;
use wasmjobs_tests::{TestServer, guest_bytes, guests, test_stores};

async fn call(
    app: axum::Router,
    method: &str,
    uri: &str,
    body: Body,
    token: Option<&str>,
) -> (StatusCode, Value) {
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
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn upload(server: &TestServer, wasm: &str, name: &str) -> Value {
    let (status, v) = call(
        server.app(),
        "POST",
        &format!("/v1/modules?name={name}"),
        Body::from(guest_bytes(wasm)),
        None,
    )
    .await;
    assert!(
        status == StatusCode::CREATED || status == StatusCode::OK,
        "{status} {v}"
    );
    v
}

async fn submit(server: &TestServer, body: Value) -> (StatusCode, Value) {
    post_json(server, "/v1/jobs", &body).await
}

async fn post_json(server: &TestServer, uri: &str, body: &Value) -> (StatusCode, Value) {
    call(
        server.app(),
        "POST",
        uri,
        Body::from(body.to_string()),
        None,
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

/// Submissions resolve a module name once and keep the digest, but a name moved to another
/// module is followed at once: the next job runs the module the name points at now.
#[tokio::test]
async fn a_moved_module_name_is_followed_by_the_next_submission() {
    for (backend, store, _db) in test_stores("api_moved_name").await {
        let server = TestServer::start(store, ApiConfig::default(), 0).await;
        let first = upload(&server, guests::NOOP, "mover").await;
        let module_of = |id: i64| {
            let app = server.app();
            async move {
                let (_, job) =
                    call(app, "GET", &format!("/v1/jobs/{id}"), Body::empty(), None).await;
                job["module"].clone()
            }
        };
        let mut ids = Vec::new();
        for _ in 0..2 {
            let (status, job) = submit(&server, json!({"module": "mover", "input": 1})).await;
            assert_eq!(status, StatusCode::CREATED, "{backend}: {job}");
            ids.push(job["id"].as_i64().expect("id"));
        }
        let second = upload(&server, guests::TESTJOB, "mover").await;
        assert_ne!(first["digest"], second["digest"]);
        let (status, job) = submit(&server, json!({"module": "mover", "input": 1})).await;
        assert_eq!(status, StatusCode::CREATED, "{backend}: {job}");
        let moved = job["id"].as_i64().expect("id");
        // The old module stays reachable by its digest.
        let (status, job) = submit(&server, json!({"module": first["digest"], "input": 1})).await;
        assert_eq!(status, StatusCode::CREATED, "{backend}: {job}");
        let by_digest = job["id"].as_i64().expect("id");
        for id in ids {
            assert_eq!(module_of(id).await, first["digest"], "{backend}");
        }
        assert_eq!(module_of(moved).await, second["digest"], "{backend}");
        assert_eq!(module_of(by_digest).await, first["digest"], "{backend}");
        server.stop().await;
    }
}

#[tokio::test]
async fn modules_upload_validation_and_lookup() {
    for (backend, store, _db) in test_stores("api_modules").await {
        let server = TestServer::start(
            store,
            ApiConfig {
                max_module_bytes: 1 << 20,
                ..ApiConfig::default()
            },
            0,
        )
        .await;
        let first = upload(&server, guests::WORDFREQ, "wordfreq").await;
        assert!(
            first["digest"]
                .as_str()
                .is_some_and(|d| d.starts_with("sha256:")),
            "{backend}"
        );
        assert_eq!(first["world"], "wasmjobs:job/job");
        let (status, again) = call(
            server.app(),
            "POST",
            "/v1/modules",
            Body::from(guest_bytes(guests::WORDFREQ)),
            None,
        )
        .await;
        assert_eq!(
            (status, &again["digest"]),
            (StatusCode::OK, &first["digest"]),
            "{backend}"
        );

        let cases: [(&[u8], &str); 3] = [
            (b"hello", "not a WebAssembly binary"),
            (b"\0asm\x01\0\0\0", "core WebAssembly module"),
            (b"\0asm\x0d\0\x01\0", "neither the wasmjobs:job/job world"),
        ];
        for (bytes, says) in cases {
            let (status, v) = call(
                server.app(),
                "POST",
                "/v1/modules",
                Body::from(bytes.to_vec()),
                None,
            )
            .await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{backend}: {v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(says)),
                "{v}"
            );
        }
        let (status, v) = call(
            server.app(),
            "POST",
            "/v1/modules",
            Body::from(vec![0u8; 2 << 20]),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{backend}: {v}");
        assert_eq!(v["error"]["code"], "too_large");
        let (status, _) = call(
            server.app(),
            "POST",
            "/v1/modules?name=has%20space",
            Body::from(guest_bytes(guests::NOOP)),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

        let (status, m) = call(
            server.app(),
            "GET",
            "/v1/modules/wordfreq",
            Body::empty(),
            None,
        )
        .await;
        assert_eq!((status, &m["digest"]), (StatusCode::OK, &first["digest"]));
        let (status, _) = call(server.app(), "GET", "/v1/modules/nope", Body::empty(), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (_, list) = call(server.app(), "GET", "/v1/modules", Body::empty(), None).await;
        assert_eq!(
            list["modules"].as_array().map(Vec::len),
            Some(1),
            "{backend}: rejected uploads were stored"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn bad_requests_are_clear_4xx_and_store_nothing() {
    for (backend, store, _db) in test_stores("api_bad").await {
        let server = TestServer::start(store, ApiConfig::default(), 0).await;
        upload(&server, guests::TESTJOB, "testjob").await;
        let cases: Vec<(Value, StatusCode, &str)> = vec![
            (
                json!({"module": "nope"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown module \"nope\"",
            ),
            (
                json!({"module": 5}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "expected a string",
            ),
            (
                json!({"module": "testjob", "limits": {"fuel": "lots"}}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "limits.fuel",
            ),
            (
                json!({"module": "testjob", "limits": {"memory_bytes": "8GiB"}}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "limits.memory_bytes",
            ),
            (
                json!({"module": "testjob", "limits": {"timeout_ms": "2h"}}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "limits.timeout_ms",
            ),
            (
                json!({"module": "testjob", "retry": {"max_attempts": 0}}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "max_attempts",
            ),
            (
                json!({"module": "testjob", "input": 1, "input_base64": "AA=="}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "not both",
            ),
            (
                json!({"module": "testjob", "input_base64": "!!"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "base64",
            ),
            (
                json!({"module": "testjob", "grants": {"dirs": [{"host": "/etc", "guest": "/etc"}]}}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "grants.dirs",
            ),
            (
                json!({"module": "testjob", "grants": {"env": {"HOME": "/"}}}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "grants.env",
            ),
            (
                json!({"module": "testjob", "surprise": true}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "surprise",
            ),
        ];
        for (body, status, says) in cases {
            let (got, v) = submit(&server, body.clone()).await;
            assert_eq!(got, status, "{backend}: {body} -> {v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(says)),
                "{body}: {v}"
            );
        }
        for (uri, body) in [("/v1/jobs", "{\"module\""), ("/v1/jobs", "")] {
            let (status, v) = call(server.app(), "POST", uri, Body::from(body), None).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        }
        for uri in [
            "/v1/jobs/abc",
            "/v1/jobs/-3",
            "/v1/jobs?cursor=x",
            "/v1/jobs?limit=0",
            "/v1/jobs?state=sleeping",
        ] {
            let (status, v) = call(server.app(), "GET", uri, Body::empty(), None).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {v}");
        }
        let (status, _) = call(server.app(), "GET", "/v1/jobs/424242", Body::empty(), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = call(
            server.app(),
            "POST",
            "/v1/jobs/424242/cancel",
            Body::empty(),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = call(server.app(), "GET", "/v2/anything", Body::empty(), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (_, list) = call(server.app(), "GET", "/v1/jobs", Body::empty(), None).await;
        assert_eq!(
            list["jobs"],
            json!([]),
            "{backend}: a rejected submission was stored"
        );
        // Submissions are committed in groups, which look their modules up together: a job
        // naming an unknown module among good ones is refused alone.
        let bodies = (0..24).map(|i| {
            let module = if i % 8 == 5 { "nope" } else { "testjob" };
            json!({"module": module, "priority": i, "run_at": 4_000_000_000_000_i64})
        });
        let answers = futures::future::join_all(bodies.map(|body| submit(&server, body))).await;
        for (i, (status, v)) in answers.iter().enumerate() {
            if i % 8 == 5 {
                assert_eq!(*status, StatusCode::UNPROCESSABLE_ENTITY, "{backend}: {v}");
                assert!(v.to_string().contains("unknown module"), "{v}");
            } else {
                assert_eq!(*status, StatusCode::CREATED, "{backend}: {v}");
                assert_eq!(v["priority"], json!(i), "{backend}: {v}");
                assert!(
                    v["module"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("sha256:")),
                    "{v}"
                );
            }
        }
        let (_, list) = call(server.app(), "GET", "/v1/jobs", Body::empty(), None).await;
        assert_eq!(list["jobs"].as_array().map(Vec::len), Some(21), "{backend}");
        server.stop().await;
    }
}

#[tokio::test]
async fn submit_wait_idempotency_retries_and_listing() {
    for (backend, store, _db) in test_stores("api_jobs").await {
        let server = TestServer::start(store, ApiConfig::default(), 2).await;
        upload(&server, guests::WORDFREQ, "wordfreq").await;
        upload(&server, guests::TESTJOB, "testjob").await;

        let resp = server
            .app()
            .oneshot(
                Request::post("/v1/jobs?wait=10s")
                    .body(Body::from(
                        json!({"module": "wordfreq", "input": {"text": "a b a"}}).to_string(),
                    ))
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::CREATED);
        let location = resp
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .map(String::from);
        let job: Value = serde_json::from_slice(
            &axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .expect("body"),
        )
        .expect("json");
        assert_eq!(job["state"], "succeeded", "{backend}: {job}");
        assert_eq!(job["output"]["words"], 3);
        assert_eq!(location, Some(format!("/v1/jobs/{}", job["id"])));
        assert_eq!(job["attempts"][0]["outcome"], "succeeded");
        assert!(
            job["attempts"][0]["fuel_consumed"]
                .as_u64()
                .is_some_and(|f| f > 0)
        );

        let body = json!({"module": "testjob", "input": {"mode": "greet", "name": "x"}, "idempotency_key": "once"});
        let (s1, a) = submit(&server, body.clone()).await;
        let (s2, b) = submit(&server, body).await;
        assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK), "{backend}");
        assert_eq!(a["id"], b["id"]);

        let (_, failing) = submit(
            &server,
            json!({"module": "testjob", "input": {"mode": "fail"}, "retry": {"max_attempts": 3, "initial_backoff_ms": "10ms"}}),
        )
        .await;
        let done = wait_final(
            &server,
            failing["id"].as_i64().unwrap_or(0),
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(done["state"], "failed", "{backend}");
        let outcomes: Vec<&str> = done["attempts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["outcome"].as_str())
            .collect();
        assert_eq!(outcomes, ["failed", "failed", "failed"], "{backend}");
        assert_eq!(done["error"], "this job fails on purpose");

        // Deterministic outcomes are not retried.
        let (_, oof) = submit(
            &server,
            json!({"module": "testjob", "input": {"mode": "spin"}, "limits": {"fuel": 1000000}}),
        )
        .await;
        let done = wait_final(
            &server,
            oof["id"].as_i64().unwrap_or(0),
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(
            (done["state"].as_str(), done["attempt_count"].as_u64()),
            (Some("failed"), Some(1)),
            "{backend}"
        );
        assert_eq!(done["outcome"], "out_of_fuel");

        // Retry by hand puts a dead job back in the queue.
        let (status, _) = call(
            server.app(),
            "POST",
            &format!("/v1/jobs/{}/retry", oof["id"]),
            Body::empty(),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let done = wait_final(
            &server,
            oof["id"].as_i64().unwrap_or(0),
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(done["attempt_count"], 2, "{backend}");

        let (_, page) = call(server.app(), "GET", "/v1/jobs?limit=2", Body::empty(), None).await;
        assert_eq!(page["jobs"].as_array().map(Vec::len), Some(2));
        let cursor = page["next_cursor"]
            .as_str()
            .expect("a next page")
            .to_string();
        let (_, rest) = call(
            server.app(),
            "GET",
            &format!("/v1/jobs?limit=10&cursor={cursor}"),
            Body::empty(),
            None,
        )
        .await;
        assert_eq!(rest["jobs"].as_array().map(Vec::len), Some(2), "{backend}");
        let (_, failed) = call(
            server.app(),
            "GET",
            "/v1/jobs?state=failed&module=testjob",
            Body::empty(),
            None,
        )
        .await;
        assert_eq!(
            failed["jobs"].as_array().map(Vec::len),
            Some(2),
            "{backend}: {failed}"
        );
        server.stop().await;
    }
}

async fn submit_batch(server: &TestServer, body: &Value) -> (StatusCode, Value) {
    post_json(server, "/v1/jobs/batch", body).await
}

#[tokio::test]
async fn batch_submit_answers_each_submission_in_order() {
    for (backend, store, _db) in test_stores("api_batch").await {
        let server = TestServer::start(store, ApiConfig::default(), 2).await;
        upload(&server, guests::WORDFREQ, "wordfreq").await;
        let ok = |text: &str| json!({"module": "wordfreq", "input": {"text": text}});
        let body = json!({"jobs": [
            ok("a b a"),
            {"module": "nope", "input": 1},
            {"module": "wordfreq", "input": 1, "input_base64": "AA=="},
            {"module": "wordfreq", "input": {"text": "x y"}, "idempotency_key": "batch-key"},
            {"module": "wordfreq", "input": {"text": "other"}, "idempotency_key": "batch-key"},
            ok("c"),
            {"module": "wordfreq", "input": {"text": "x y"}, "idempotency_key": "batch-key"},
        ]});
        let (status, answer) = submit_batch(&server, &body).await;
        assert_eq!(status, StatusCode::OK, "{backend}: {answer}");
        let answers = answer["jobs"].as_array().expect("jobs");
        let statuses: Vec<u64> = answers
            .iter()
            .map(|a| a["status"].as_u64().unwrap_or(0))
            .collect();
        assert_eq!(
            statuses,
            [201, 422, 422, 201, 422, 201, 200],
            "{backend}: {answer}"
        );
        assert_eq!(answers[1]["error"]["code"], "unknown_module", "{answers:?}");
        assert!(
            answers[1]["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("nope")),
            "{answers:?}"
        );
        assert_eq!(answers[2]["error"]["code"], "invalid");
        assert!(answers[1]["job"].is_null() && answers[2]["job"].is_null());
        // The key again with another request is refused; with the same request, it answers
        // with the first job of that key.
        assert_eq!(answers[4]["error"]["code"], "idempotency_key_reused");
        assert_eq!(answers[6]["job"]["id"], answers[3]["job"]["id"]);
        assert_eq!(answers[6]["job"]["idempotency_key"], "batch-key");

        // Each accepted job runs: the answers are real jobs, with their own input.
        for (i, words) in [(0, 3), (3, 2), (5, 1)] {
            let id = answers[i]["job"]["id"].as_i64().expect("id");
            assert_eq!(
                answers[i]["job"]["state"], "queued",
                "{backend}: {answers:?}"
            );
            let job = wait_final(&server, id, Duration::from_secs(20)).await;
            assert_eq!(job["state"], "succeeded", "{backend}: {job}");
            assert_eq!(job["output"]["words"], words, "{backend}: {job}");
        }
        let stored = |v: Value| v["jobs"].as_array().map_or(0, Vec::len);
        let (_, list) = call(server.app(), "GET", "/v1/jobs", Body::empty(), None).await;
        assert_eq!(
            stored(list),
            3,
            "{backend}: only the accepted jobs are stored"
        );

        // Batches refused as a whole store nothing and say why.
        let many: Vec<Value> = (0..1001).map(|_| ok("a")).collect();
        for (bad, want, says) in [
            (json!({"jobs": []}), StatusCode::BAD_REQUEST, "1 to 1000"),
            (
                json!({"jobs": many}),
                StatusCode::BAD_REQUEST,
                "1001 submissions",
            ),
            (
                json!({"jobs": [ok("a"), {"module": 5}]}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "jobs[1].module",
            ),
            (
                json!({"job": [ok("a")]}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown field `job`",
            ),
            (
                json!([ok("a")]),
                StatusCode::UNPROCESSABLE_ENTITY,
                "expected an object {\"jobs\"",
            ),
        ] {
            let (status, err) = submit_batch(&server, &bad).await;
            assert_eq!(status, want, "{backend}: {err}");
            let message = err["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(says),
                "{backend}: {message:?} should say {says:?}"
            );
        }
        let (status, err) = call(
            server.app(),
            "POST",
            "/v1/jobs/batch",
            Body::from("{\"jobs\": ["),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        let (_, list) = call(server.app(), "GET", "/v1/jobs", Body::empty(), None).await;
        assert_eq!(stored(list), 3, "{backend}: a refused batch stores nothing");
        server.stop().await;
    }
}

#[tokio::test]
async fn long_jobs_are_not_claimed_ahead_so_two_nodes_share_them() {
    for (backend, store, _db) in test_stores("claim_ahead").await {
        // Two nodes of one slot each on one store. A node claims ahead of its free slots only
        // what its slot gets through in 20 ms: nothing for jobs of 300 ms (nor before it knows
        // how long jobs take), so neither node takes the other's share: each claims a job only
        // when its slot is free.
        let a = TestServer::start(store.clone(), ApiConfig::default(), 1).await;
        let b = TestServer::start(store, ApiConfig::default(), 1).await;
        upload(&a, guests::TESTJOB, "testjob").await;
        let sleep = json!({"module": "testjob", "input": {"mode": "sleep", "ms": 300}});
        let (status, answer) = submit_batch(&a, &json!({"jobs": vec![sleep; 6]})).await;
        assert_eq!(status, StatusCode::OK, "{backend}: {answer}");
        // Per node, its attempts' [start, end]: a job claimed ahead is `running` (its attempt
        // started) while the node's slot still runs another, so hoarding shows as overlap.
        let mut by_worker = std::collections::HashMap::<String, Vec<(i64, i64)>>::new();
        for entry in answer["jobs"].as_array().expect("jobs") {
            let id = entry["job"]["id"].as_i64().expect("id");
            let job = wait_final(&a, id, Duration::from_secs(30)).await;
            assert_eq!(job["state"], "succeeded", "{backend}: {job}");
            let attempt = &job["attempts"][0];
            let worker = attempt["worker"].as_str().expect("worker");
            let span = (
                attempt["started_at"].as_i64().expect("started_at"),
                attempt["finished_at"].as_i64().expect("finished_at"),
            );
            by_worker.entry(worker.to_string()).or_default().push(span);
        }
        assert_eq!(
            by_worker.len(),
            2,
            "{backend}: both nodes ran jobs: {by_worker:?}"
        );
        for (worker, spans) in &mut by_worker {
            spans.sort();
            assert!(
                spans.windows(2).all(|w| w[1].0 >= w[0].1),
                "{backend}: {worker} held a job while its one slot ran another: {spans:?}"
            );
        }
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test]
async fn a_draining_node_finishes_the_jobs_it_holds() {
    for (backend, store, _db) in test_stores("drain").await {
        let server = TestServer::start(store.clone(), ApiConfig::default(), 1).await;
        upload(&server, guests::NOOP, "noop").await;
        let noop = |i: usize| json!({"module": "noop", "input": i});
        // Short jobs first, so that the node learns their pace and claims ahead.
        let (_, warm) = submit_batch(
            &server,
            &json!({"jobs": (0..50).map(noop).collect::<Vec<_>>()}),
        )
        .await;
        let last = warm["jobs"][49]["job"]["id"].as_i64().expect("id");
        wait_final(&server, last, Duration::from_secs(20)).await;
        let (_, batch) = submit_batch(
            &server,
            &json!({"jobs": (0..1000).map(noop).collect::<Vec<_>>()}),
        )
        .await;
        let ids: Vec<i64> = batch["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .map(|j| j["job"]["id"].as_i64().expect("id"))
            .collect();
        // Stop while the node works through them (some done, some held ahead, some queued).
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let job = store.get_job(ids[0]).await.expect("get").expect("job");
            if job.state == JobState::Succeeded {
                break;
            }
            assert!(Instant::now() < until, "{backend}: the first job never ran");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        server.stop_gracefully(Duration::from_secs(10)).await;

        // Every job the node held ran and was recorded: none is left running (it would wait
        // for its lease to expire and be retried with a `lost` attempt), none ran twice.
        let mut states = std::collections::HashMap::<JobState, usize>::new();
        for id in &ids {
            let job = store.get_job(*id).await.expect("get").expect("job");
            *states.entry(job.state).or_default() += 1;
            let attempts = store.attempts(*id).await.expect("attempts");
            match job.state {
                JobState::Succeeded => assert_eq!(attempts.len(), 1, "{backend}: {attempts:?}"),
                JobState::Queued => assert!(attempts.is_empty(), "{backend}: {attempts:?}"),
                other => panic!("{backend}: job {id} left {other:?} by a drained node"),
            }
        }
        assert!(
            states.get(&JobState::Succeeded).copied().unwrap_or(0) > 1,
            "{backend}: {states:?}"
        );
    }
}

#[tokio::test]
async fn cancel_stops_a_running_job_within_a_second() {
    for (backend, store, _db) in test_stores("api_cancel").await {
        let server = TestServer::start(store, ApiConfig::default(), 1).await;
        upload(&server, guests::TESTJOB, "testjob").await;
        let (status, job) = submit(
            &server,
            json!({"module": "testjob", "input": {"mode": "spin"}, "limits": {"fuel": 90_000_000_000u64, "timeout_ms": "60s"}}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{job}");
        let id = job["id"].as_i64().unwrap_or(0);
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, j) = call(
                server.app(),
                "GET",
                &format!("/v1/jobs/{id}"),
                Body::empty(),
                None,
            )
            .await;
            if j["state"] == "running" {
                break;
            }
            assert!(Instant::now() < until, "never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let asked = Instant::now();
        let (status, v) = call(
            server.app(),
            "POST",
            &format!("/v1/jobs/{id}/cancel"),
            Body::empty(),
            None,
        )
        .await;
        assert_eq!(
            (status, v["state"].as_str()),
            (StatusCode::OK, Some("running")),
            "{backend}"
        );
        let done = wait_final(&server, id, Duration::from_secs(5)).await;
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{backend}: took {:?}",
            asked.elapsed()
        );
        assert_eq!(done["state"], "cancelled");
        assert_eq!(done["attempts"][0]["outcome"], "cancelled");

        // A queued job is cancelled at once; a finished one cannot be.
        let (_, queued) = submit(&server, json!({"module": "testjob", "input": {"mode": "greet"}, "run_at": 4_000_000_000_000i64})).await;
        assert_eq!(queued["state"], "scheduled");
        let (_, v) = call(
            server.app(),
            "POST",
            &format!("/v1/jobs/{}/cancel", queued["id"]),
            Body::empty(),
            None,
        )
        .await;
        assert_eq!(v["state"], "cancelled");
        server.stop().await;
    }
}

/// Reads an SSE stream until `end` or until `stop_after` events; returns (id, event, data).
pub(crate) async fn read_sse(
    url: &str,
    last_id: Option<&str>,
    stop_after: Option<usize>,
) -> Vec<(String, String, Value)> {
    let mut req = reqwest::Client::new().get(url);
    if let Some(id) = last_id {
        req = req.header("last-event-id", id);
    }
    let resp = req.send().await.expect("connect");
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let (mut buf, mut out) = (String::new(), Vec::new());
    let (mut id, mut ev, mut data) = (String::new(), String::new(), String::new());
    // A stream that never ends fails the test instead of hanging the suite.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(_) => break,
            Err(_) => panic!("{url}: no `end` event within 60 s; events so far: {out:?}"),
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(pos) = buf.find('\n') {
            let line = buf[..pos].to_string();
            buf.drain(..=pos);
            if line.is_empty() {
                if !ev.is_empty() {
                    out.push((
                        id.clone(),
                        ev.clone(),
                        serde_json::from_str(&data).unwrap_or(Value::Null),
                    ));
                    if ev == "end" || stop_after.is_some_and(|n| out.len() >= n) {
                        return out;
                    }
                }
                (id, ev, data) = (String::new(), String::new(), String::new());
            } else if let Some(v) = line.strip_prefix("id: ").or(line.strip_prefix("id:")) {
                id = v.to_string();
            } else if let Some(v) = line.strip_prefix("event: ").or(line.strip_prefix("event:")) {
                ev = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
                data.push_str(v);
            }
        }
    }
    out
}

#[tokio::test]
async fn a_running_jobs_logs_reach_its_event_stream_before_it_ends() {
    for (backend, store, _db) in test_stores("api_live_logs").await {
        let server = TestServer::start(store, ApiConfig::default(), 1).await;
        upload(&server, guests::TESTJOB, "testjob").await;
        let (_, job) = submit(
            &server,
            json!({"module": "testjob", "input": {"mode": "logsleep", "lines": 3, "ms": 3000}}),
        )
        .await;
        let url = format!("{}/v1/jobs/{}/events", server.url, job["id"]);
        // queued, running, then the three lines, while the job sleeps for 3 s.
        let started = std::time::Instant::now();
        let head = read_sse(&url, None, Some(5)).await;
        let kinds: Vec<&str> = head.iter().map(|(_, e, _)| e.as_str()).collect();
        assert_eq!(kinds, ["state", "state", "log", "log", "log"], "{backend}");
        assert_eq!(
            head[4].2["message"],
            json!("line 2 before the sleep"),
            "{backend}"
        );
        let (_, now) = call(
            server.app(),
            "GET",
            &format!("/v1/jobs/{}", job["id"]),
            Body::empty(),
            None,
        )
        .await;
        assert_eq!(
            now["state"],
            json!("running"),
            "{backend}: the logs came {:?} after the submit, only once the job had ended",
            started.elapsed()
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn events_stream_live_and_resume_without_loss_or_duplicates() {
    for (backend, store, _db) in test_stores("api_sse").await {
        let server = TestServer::start(store, ApiConfig::default(), 1).await;
        upload(&server, guests::TESTJOB, "testjob").await;
        let (_, job) = submit(
            &server,
            json!({"module": "testjob", "input": {"mode": "logflood", "lines": 30}}),
        )
        .await;
        let url = format!("{}/v1/jobs/{}/events", server.url, job["id"]);

        let full = read_sse(&url, None, None).await;
        let kinds: Vec<&str> = full.iter().map(|(_, e, _)| e.as_str()).collect();
        assert_eq!(kinds.first(), Some(&"state"), "{backend}");
        assert_eq!(kinds[kinds.len() - 2..], ["output", "end"], "{backend}");
        assert_eq!(
            full.iter().filter(|(_, e, _)| e == "log").count(),
            60,
            "{backend}: 30 report + 30 stderr lines"
        );
        assert_eq!(
            full.last().map(|(_, _, d)| d["state"].clone()),
            Some(json!("succeeded"))
        );
        let ids: Vec<i64> = full
            .iter()
            .filter_map(|(id, _, _)| id.parse().ok())
            .collect();
        assert_eq!(
            ids,
            (1..=ids.len() as i64).collect::<Vec<_>>(),
            "{backend}: ids are the gapless history"
        );

        // Drop the connection after 5 events, resume from the last id seen.
        let head = read_sse(&url, None, Some(5)).await;
        let last = head.last().map(|(id, _, _)| id.clone()).expect("an event");
        let tail = read_sse(&url, Some(&last), None).await;
        let mut joined: Vec<String> = head
            .iter()
            .chain(tail.iter())
            .map(|(id, _, _)| id.clone())
            .filter(|i| !i.is_empty())
            .collect();
        let all: Vec<String> = full
            .iter()
            .map(|(id, _, _)| id.clone())
            .filter(|i| !i.is_empty())
            .collect();
        assert_eq!(joined, all, "{backend}: resume lost or repeated events");
        joined.dedup();
        assert_eq!(joined.len(), all.len());

        let resp = reqwest::get(format!("{}/v1/jobs/99999/events", server.url))
            .await
            .expect("get");
        assert_eq!(resp.status(), 404);
        let resp = reqwest::Client::new()
            .get(&url)
            .header("last-event-id", "banana")
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), 400);
        server.stop().await;
    }
}

#[tokio::test]
async fn bearer_tokens_and_scopes() {
    for (_backend, store, _db) in test_stores("api_auth").await {
        let tokens = vec![
            Token::from_secret("ro", "read-secret", Scope::Read),
            Token::from_secret("ci", "submit-secret", Scope::Submit),
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
        let (status, v) = call(server.app(), "GET", "/v1/jobs", Body::empty(), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(v["error"]["code"], "unauthorized");
        let (status, _) = call(
            server.app(),
            "GET",
            "/v1/jobs",
            Body::empty(),
            Some("wrong"),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = call(
            server.app(),
            "GET",
            "/v1/jobs",
            Body::empty(),
            Some("read-secret"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, v) = call(
            server.app(),
            "POST",
            "/v1/modules",
            Body::from(guest_bytes(guests::NOOP)),
            Some("read-secret"),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
        let (status, _) = call(
            server.app(),
            "POST",
            "/v1/modules",
            Body::from(guest_bytes(guests::NOOP)),
            Some("submit-secret"),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _) = call(server.app(), "GET", "/healthz", Body::empty(), None).await;
        assert_eq!(status, StatusCode::OK);
        let resp = server
            .app()
            .oneshot(
                Request::get("/metrics")
                    .header("authorization", "Bearer read-secret")
                    .body(Body::empty())
                    .expect("req"),
            )
            .await
            .expect("resp");
        let text = String::from_utf8(
            axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .expect("body")
                .to_vec(),
        )
        .expect("utf-8");
        assert!(text.contains("wasmjobs_jobs{state=\"queued\"} 0"), "{text}");
        server.stop().await;
    }
}

/// Every route of SPEC.md that exists today, as `(method, path)` in OpenAPI's spelling.
const ROUTES: [(&str, &str); 26] = [
    ("post", "/v1/modules"),
    ("get", "/v1/modules"),
    ("get", "/v1/modules/{key}"),
    ("get", "/v1/modules/{key}/wasm"),
    ("post", "/v1/jobs"),
    ("post", "/v1/jobs/batch"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/{id}"),
    ("get", "/v1/jobs/{id}/events"),
    ("post", "/v1/jobs/{id}/cancel"),
    ("post", "/v1/jobs/{id}/retry"),
    ("post", "/v1/schedules"),
    ("get", "/v1/schedules"),
    ("delete", "/v1/schedules/{key}"),
    ("post", "/v1/workflows"),
    ("get", "/v1/workflows"),
    ("get", "/v1/workflows/{name}"),
    ("get", "/v1/workflows/{name}/graph"),
    ("post", "/v1/workflows/{name}/runs"),
    ("get", "/v1/workflow-runs/{id}"),
    ("get", "/v1/workflow-runs/{id}/events"),
    ("post", "/v1/workflow-runs/{id}/cancel"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

#[tokio::test]
async fn openapi_document_lists_every_route_and_nothing_else() {
    let (_backend, store, _db) = test_stores("openapi")
        .await
        .into_iter()
        .next()
        .expect("a SQLite store");
    let server = TestServer::start(store, ApiConfig::default(), 0).await;
    let (status, doc) = call(server.app(), "GET", "/openapi.json", Body::empty(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "OpenAPI 3.1: {}",
        doc["openapi"]
    );
    assert_eq!(
        doc,
        serde_json::to_value(wasmjobs::http::openapi_document()).expect("json")
    );

    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                documented.push((method.clone(), path.clone()));
            }
        }
    }
    documented.sort();
    let mut expected: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    expected.sort();
    assert_eq!(
        documented, expected,
        "the document lists exactly the API's routes"
    );

    // Every documented route is served: no fallback 404 ("no route for") and no 405.
    for (method, path) in &expected {
        let uri = path
            .replace("{key}", "nope")
            .replace("{id}", "999999")
            .replace("{name}", "nope");
        let (status, body) = call(
            server.app(),
            &method.to_uppercase(),
            &uri,
            Body::empty(),
            None,
        )
        .await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            !message.starts_with("no route for"),
            "{method} {uri} is documented but not served"
        );
        // Each documented operation names its responses, errors included.
        let op = &doc["paths"][path][method];
        assert!(
            op["responses"]["200"].is_object()
                || op["responses"]["201"].is_object()
                || op["responses"]["202"].is_object()
                || op["responses"]["204"].is_object(),
            "{method} {path}: {op}"
        );
    }
    // And a route that does not exist is the fallback, so the check above can fail.
    let (status, body) = call(server.app(), "GET", "/v1/nothing", Body::empty(), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("no route for")
    );
}

#[tokio::test]
async fn workflow_definitions_are_validated_versioned_and_drawn() {
    for (backend, store, _db) in test_stores("workflows").await {
        let server = TestServer::start(store, ApiConfig::default(), 0).await;
        upload(&server, guests::NOOP, "noop").await;
        upload(&server, guests::WORDFREQ, "wordfreq").await;
        let post = |body: &'static str| {
            let app = server.app();
            async move { call(app, "POST", "/v1/workflows", Body::from(body), None).await }
        };
        let yaml = "name: chain\nnodes:\n  - name: a\n    module: noop\n  - name: b\n    module: wordfreq\n    needs: [a]\n    when: /n > 1\n";
        let (status, v) = post(yaml).await;
        assert_eq!(status, StatusCode::CREATED, "{backend}: {v}");
        assert_eq!(
            (v["name"].as_str(), v["version"].as_i64()),
            (Some("chain"), Some(1))
        );
        assert_eq!(v["definition"]["nodes"][1]["needs"], json!(["a"]));
        // The same definition again (as JSON this time): the same version, 200.
        let same = r#"{"name": "chain", "nodes": [{"name": "a", "module": "noop"}, {"name": "b", "module": "wordfreq", "needs": ["a"], "when": "/n > 1"}]}"#;
        let (status, v) = post(same).await;
        assert_eq!(
            (status, v["version"].as_i64()),
            (StatusCode::OK, Some(1)),
            "{backend}: {v}"
        );
        // A change is a new version; the old one stays readable.
        let changed = r#"{"name": "chain", "nodes": [{"name": "a", "module": "noop"}]}"#;
        let (status, v) = post(changed).await;
        assert_eq!(
            (status, v["version"].as_i64()),
            (StatusCode::CREATED, Some(2)),
            "{backend}: {v}"
        );
        let (status, v) = call(
            server.app(),
            "GET",
            "/v1/workflows/chain",
            Body::empty(),
            None,
        )
        .await;
        assert_eq!((status, v["version"].as_i64()), (StatusCode::OK, Some(2)));
        let (status, v) = call(
            server.app(),
            "GET",
            "/v1/workflows/chain?version=1",
            Body::empty(),
            None,
        )
        .await;
        assert_eq!(
            (status, v["definition"]["nodes"].as_array().map(Vec::len)),
            (StatusCode::OK, Some(2))
        );
        let (status, v) = call(server.app(), "GET", "/v1/workflows", Body::empty(), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            v["workflows"].as_array().map(Vec::len),
            Some(1),
            "latest versions only: {v}"
        );

        // Drawings.
        let resp = server
            .app()
            .oneshot(
                Request::builder()
                    .uri("/v1/workflows/chain/graph?version=1&format=dot")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        let dot = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let dot = String::from_utf8_lossy(&dot);
        assert!(dot.contains("\"a\" -> \"b\" [label=\"/n > 1\"];"), "{dot}");

        // Refused, each naming what is wrong; nothing stored.
        for (body, status, needle) in [
            (
                r#"{"name": "loop", "nodes": [{"name": "a", "module": "noop", "needs": ["b"]}, {"name": "b", "module": "noop", "needs": ["a"]}]}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "cycle: a → b → a",
            ),
            (
                r#"{"name": "ghosts", "nodes": [{"name": "a", "module": "nope"}, {"name": "b", "module": "missing"}]}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown modules \"missing\", \"nope\"",
            ),
            (
                r#"{"name": "needs", "nodes": [{"name": "a", "module": "noop", "needs": ["zz"]}]}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "needs \"zz\"",
            ),
            (
                r#"{"name": "dup", "nodes": [{"name": "a", "module": "noop"}, {"name": "a", "module": "noop"}]}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "duplicate node name \"a\"",
            ),
            (
                r#"{"name": "pred", "nodes": [{"name": "a", "module": "noop", "when": "/x >> 1"}]}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "when",
            ),
            (
                r#"{"name": "x", "nodes": [{"nam": "a"}]}"#,
                StatusCode::BAD_REQUEST,
                "nam",
            ),
            ("nodes: [unclosed", StatusCode::BAD_REQUEST, "cannot parse"),
        ] {
            let (got, v) = post(body).await;
            assert_eq!(got, status, "{backend}: {body}: {v}");
            let message = v["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(needle),
                "{backend}: expected {needle:?} in {message:?}"
            );
        }
        let (status, v) = call(server.app(), "GET", "/v1/workflows", Body::empty(), None).await;
        assert_eq!(
            (status, v["workflows"].as_array().map(Vec::len)),
            (StatusCode::OK, Some(1)),
            "{v}"
        );
        for (uri, status) in [
            ("/v1/workflows/loop", StatusCode::NOT_FOUND),
            ("/v1/workflows/chain?version=9", StatusCode::NOT_FOUND),
            ("/v1/workflows/chain?version=x", StatusCode::BAD_REQUEST),
            (
                "/v1/workflows/chain/graph?format=png",
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let (got, v) = call(server.app(), "GET", uri, Body::empty(), None).await;
            assert_eq!(got, status, "{backend}: {uri}: {v}");
        }
        server.stop().await;
    }
}

/// A node on Postgres has its queue vacuumed once it has taken 2,000 rows off it (the node's
/// upkeep asks the store), without waiting for autovacuum (off on the test server or not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_node_vacuums_its_queue_as_it_takes_jobs() {
    let Some(url) = std::env::var("WASMJOBS_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!(
            "SKIPPED: a_postgres_node_vacuums_its_queue_as_it_takes_jobs (set WASMJOBS_TEST_POSTGRES to run it)"
        );
        return;
    };
    wasmjobs_tests::drop_stale_schemas(&url, "tidy").await;
    let schema = format!("t_tidy_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&url).await.expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&admin)
    .await
    .expect("drop the schema");
    let store = wasmjobs::store::open_postgres_schema(&url, &schema)
        .await
        .expect("open");
    let server = TestServer::start(store.clone(), ApiConfig::default(), 2).await;
    upload(&server, guests::NOOP, "noop").await;
    let vacuums = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT vacuum_count FROM pg_stat_user_tables \
             WHERE schemaname = $1 AND relname = 'job_queue'",
        )
        .bind(&schema)
        .fetch_one(&admin)
        .await
        .expect("vacuum count")
    };
    assert_eq!(vacuums().await, 0, "no vacuum before any job");
    for _ in 0..3 {
        let jobs: Vec<Value> = (0..1000).map(|_| json!({"module": "noop"})).collect();
        let (status, v) = submit_batch(&server, &json!({ "jobs": jobs })).await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = store.count_by_state().await.expect("count");
        let succeeded = counts
            .iter()
            .find(|(s, _)| *s == JobState::Succeeded)
            .map_or(0, |(_, n)| *n);
        if succeeded == 3000 {
            break;
        }
        assert!(Instant::now() < deadline, "jobs did not end: {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The statistics reach pg_stat_user_tables within a second or so of the vacuum.
    let deadline = Instant::now() + Duration::from_secs(10);
    while vacuums().await == 0 {
        assert!(
            Instant::now() < deadline,
            "3,000 jobs claimed and the queue was never vacuumed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;
    drop(store);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&admin)
    .await
    .expect("drop the schema");
}
