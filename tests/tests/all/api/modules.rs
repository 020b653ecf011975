//! Modules: upload, validation, names; and bad requests of every kind.

use super::*;

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
                v["detail"].as_str().is_some_and(|m| m.contains(says)),
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
        assert_eq!(v["code"], "too_large");
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
            (
                json!({"module": "testjob", "concurrency_limit": 2}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "concurrency_limit needs a concurrency_key",
            ),
            (
                json!({"module": "testjob", "concurrency_key": "a", "concurrency_limit": 0}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "concurrency_limit must be 1 to 1000000",
            ),
            (
                json!({"module": "testjob", "concurrency_key": "a", "concurrency_limit": -1}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "concurrency_limit",
            ),
            (
                json!({"module": "testjob", "concurrency_key": ""}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "concurrency_key must be 1 to 200 bytes",
            ),
            (
                json!({"module": "testjob", "concurrency_key": "k".repeat(201)}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "concurrency_key must be 1 to 200 bytes",
            ),
        ];
        for (body, status, says) in cases {
            let (got, v) = submit(&server, body.clone()).await;
            assert_eq!(got, status, "{backend}: {body} -> {v}");
            assert!(
                v["detail"].as_str().is_some_and(|m| m.contains(says)),
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
