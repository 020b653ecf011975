//! What is retried: a failure the job marks permanent is not, traps retry as the policy lists,
//! and a component built against the first contract (`wasmjobs:job@0.1.0`) still runs.

use super::*;

fn outcomes(job: &Value) -> Vec<&str> {
    job["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["outcome"].as_str())
        .collect()
}

#[tokio::test]
async fn permanent_failures_and_listed_traps_decide_the_retries() {
    for (backend, store, _db) in test_stores("api_retries").await {
        let server = TestServer::start(store.clone(), ApiConfig::default(), 2).await;
        upload(&server, guests::TESTJOB, "testjob").await;
        let retry = json!({"max_attempts": 4, "initial_backoff_ms": "10ms"});
        let run = |input: Value, retry: Value| {
            let server = &server;
            async move {
                let (status, job) = submit(
                    server,
                    json!({"module": "testjob", "input": input, "retry": retry}),
                )
                .await;
                assert_eq!(status, StatusCode::CREATED, "{job}");
                wait_final(
                    server,
                    job["id"].as_i64().unwrap_or(0),
                    Duration::from_secs(30),
                )
                .await
            }
        };

        // Marked permanent by the SDK: one attempt, whatever the policy has left.
        let done = run(json!({"mode": "permanent"}), retry.clone()).await;
        assert_eq!(done["state"], "failed", "{backend}: {done}");
        assert_eq!(outcomes(&done), ["failed"], "{backend}: {done}");
        assert_eq!(done["error"], "this input can never work", "{backend}");
        let events = store
            .events(done["id"].as_i64().unwrap_or(0), 0, 100)
            .await
            .expect("events");
        let failed = events
            .iter()
            .find(|e| e.kind == "state" && e.data["state"] == "failed")
            .expect("a failed event");
        assert_eq!(
            failed.data["permanent"], true,
            "{backend}: {:?}",
            failed.data
        );
        // The same failure, not permanent: every attempt.
        let done = run(json!({"mode": "fail"}), retry.clone()).await;
        assert_eq!(outcomes(&done).len(), 4, "{backend}: {done}");

        // Traps: only the listed kinds retry.
        let mut only_overflow = retry.clone();
        only_overflow["retry_on_traps"] = json!(["stack_overflow"]);
        let done = run(json!({"mode": "panic"}), only_overflow.clone()).await;
        assert_eq!(outcomes(&done), ["trapped"], "{backend}: {done}");
        let done = run(json!({"mode": "recurse"}), only_overflow).await;
        assert_eq!(outcomes(&done), ["trapped"; 4], "{backend}: {done}");
        assert_eq!(done["attempts"][0]["trap"], "stack_overflow", "{backend}");
        // An unknown trap kind is refused with its name.
        let (status, v) = submit(
            &server,
            json!({"module": "testjob", "input": {}, "retry": {"retry_on_traps": ["boom"]}}),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{backend}: {v}");
        assert!(
            v["detail"].as_str().unwrap_or_default().contains("boom"),
            "{v}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn a_component_built_against_the_first_contract_still_runs() {
    for (backend, store, _db) in test_stores("api_legacy").await {
        let server = TestServer::start(store, ApiConfig::default(), 1).await;
        let module = upload(&server, guests::LEGACY, "legacy").await;
        let imports = module["imports"].to_string();
        assert!(imports.contains("wasmjobs:job/io@0.1.0"), "{module}");
        let (status, job) = post_json(
            &server,
            "/v1/jobs?wait=30s",
            &json!({"module": "legacy", "input": {"kept": [1, 2]}}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{backend}: {job}");
        assert_eq!(job["state"], "succeeded", "{backend}: {job}");
        assert_eq!(job["output"], json!({"kept": [1, 2]}), "{backend}: {job}");
        server.stop().await;
    }
}
