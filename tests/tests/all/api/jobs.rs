//! Jobs over HTTP: submit, wait, batches, listing, cancel, draining, several nodes.

use super::*;

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

        // The key as the Idempotency-Key header: the same request answers the first job, a
        // different one under the key is refused, and a header and a field that differ too.
        let keyed = |key: &'static str, body: Value| {
            let app = server.app();
            async move {
                let resp = app
                    .oneshot(
                        Request::post("/v1/jobs")
                            .header("content-type", "application/json")
                            .header("idempotency-key", key)
                            .body(Body::from(body.to_string()))
                            .expect("request"),
                    )
                    .await
                    .expect("response");
                let status = resp.status();
                let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                    .await
                    .expect("body");
                (
                    status,
                    serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
                )
            }
        };
        let greet = json!({"module": "testjob", "input": {"mode": "greet", "name": "h"}});
        let (s1, first) = keyed("by-header", greet.clone()).await;
        let (s2, again) = keyed("by-header", greet.clone()).await;
        assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK), "{backend}");
        assert_eq!(first["id"], again["id"]);
        assert_eq!(first["idempotency_key"], "by-header");
        let (s, v) = keyed(
            "by-header",
            json!({"module": "testjob", "input": {"mode": "greet", "name": "other"}}),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{backend}: {v}");
        assert_eq!(v["code"], "idempotency_key_reused");
        let mut both = greet.clone();
        both["idempotency_key"] = json!("by-field");
        let (s, v) = keyed("by-header", both).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{backend}: {v}");
        assert!(v["detail"].as_str().unwrap_or("").contains("differ"), "{v}");

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
        assert_eq!(rest["jobs"].as_array().map(Vec::len), Some(3), "{backend}");
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
            answers[1]["error"]["detail"]
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
            let message = err["detail"].as_str().unwrap_or_default();
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

/// A node on Postgres has its queue vacuumed once it has taken 2,000 rows off it (the node's
/// upkeep asks the store), without waiting for autovacuum (off on the test server or not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_node_vacuums_its_queue_as_it_takes_jobs() {
    let Some((url, schema, admin)) =
        crate::store::postgres_only("a_postgres_node_vacuums_its_queue_as_it_takes_jobs", "tidy")
            .await
    else {
        return;
    };
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
