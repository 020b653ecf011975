//! Tokens and scopes, the OpenAPI document, workflow definitions.

use super::*;

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
        assert_eq!(v["code"], "unauthorized");
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
        // A 401 says how to authenticate; the scheme is case-insensitive.
        for (authorization, status, challenge) in [
            (
                None,
                StatusCode::UNAUTHORIZED,
                Some(r#"Bearer realm="wasmjobs""#),
            ),
            (
                Some("Bearer wrong"),
                StatusCode::UNAUTHORIZED,
                Some(r#"Bearer realm="wasmjobs", error="invalid_token""#),
            ),
            (
                Some("Basic cmVhZC1zZWNyZXQ="),
                StatusCode::UNAUTHORIZED,
                Some(r#"Bearer realm="wasmjobs""#),
            ),
            (Some("bearer read-secret"), StatusCode::OK, None),
            (Some("BEARER  read-secret"), StatusCode::OK, None),
        ] {
            let mut req = Request::get("/v1/jobs");
            if let Some(a) = authorization {
                req = req.header("authorization", a);
            }
            let resp = server
                .app()
                .oneshot(req.body(Body::empty()).expect("req"))
                .await
                .expect("resp");
            assert_eq!(resp.status(), status, "{authorization:?}");
            assert_eq!(
                resp.headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok()),
                challenge,
                "{authorization:?}"
            );
        }
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
const ROUTES: [(&str, &str); 39] = [
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
    ("get", "/v1/queues"),
    ("post", "/v1/queues/{name}/pause"),
    ("post", "/v1/queues/{name}/resume"),
    ("post", "/v1/schedules"),
    ("get", "/v1/schedules"),
    ("delete", "/v1/schedules/{key}"),
    ("post", "/v1/workflows"),
    ("get", "/v1/workflows"),
    ("get", "/v1/workflows/{name}"),
    ("get", "/v1/workflows/{name}/graph"),
    ("post", "/v1/workflows/{name}/runs"),
    ("get", "/v1/workflow-runs"),
    ("get", "/v1/workflow-runs/{id}"),
    ("get", "/v1/workflow-runs/{id}/events"),
    ("post", "/v1/workflow-runs/{id}/cancel"),
    ("post", "/v1/workflow-runs/{id}/retry"),
    ("post", "/v1/webhooks"),
    ("get", "/v1/webhooks"),
    ("get", "/v1/webhooks/{id}"),
    ("patch", "/v1/webhooks/{id}"),
    ("delete", "/v1/webhooks/{id}"),
    ("get", "/v1/webhooks/{id}/deliveries"),
    ("post", "/v1/webhooks/{id}/deliveries/{delivery}/redeliver"),
    ("get", "/v1/stats"),
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

    // What client generators need: a server, a unique operationId for every operation, and
    // an example for every JSON request body.
    assert_eq!(doc["servers"][0]["url"], "/", "{}", doc["servers"]);
    let mut operation_ids = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(!id.is_empty(), "{method} {path}: no operationId");
            assert!(
                operation_ids.insert(id.to_string()),
                "{method} {path}: operationId {id} twice"
            );
            if let Some(json) = op["requestBody"]["content"].get("application/json") {
                assert!(json["example"].is_object(), "{method} {path}: no example");
            }
        }
    }

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
        let message = body["detail"].as_str().unwrap_or_default();
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
        body["detail"]
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
            let message = v["detail"].as_str().unwrap_or_default();
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

/// CORS is off unless origins are configured; then a browser's preflight from one of them is
/// answered before authentication, and its requests carry the allow-origin header; other
/// origins get none.
#[tokio::test]
async fn cors_is_off_by_default_and_answers_configured_origins() {
    let (_backend, store, _db) = test_stores("api_cors").await.remove(0);
    let origin = axum::http::HeaderValue::from_static("https://app.example");
    let ask = |app: axum::Router, method: &'static str, from: &'static str, token: bool| async move {
        let mut req = Request::builder()
            .method(method)
            .uri("/v1/jobs")
            .header("origin", from);
        if method == "OPTIONS" {
            req = req.header("access-control-request-method", "POST").header(
                "access-control-request-headers",
                "authorization, content-type",
            );
        }
        if token {
            req = req.header("authorization", "Bearer s");
        }
        let resp = app
            .oneshot(req.body(Body::empty()).expect("req"))
            .await
            .expect("resp");
        let allowed = resp
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (resp.status(), allowed)
    };
    let plain = TestServer::start(store.clone(), ApiConfig::default(), 0).await;
    let (_, allowed) = ask(plain.app(), "GET", "https://app.example", false).await;
    assert_eq!(allowed, None, "no CORS headers by default");
    plain.stop().await;

    let server = TestServer::start(
        store,
        ApiConfig {
            tokens: vec![Token::from_secret("t", "s", Scope::Read)],
            cors_allowed_origins: vec![origin],
            ..ApiConfig::default()
        },
        0,
    )
    .await;
    let (status, allowed) = ask(server.app(), "OPTIONS", "https://app.example", false).await;
    assert!(status.is_success(), "preflight: {status}");
    assert_eq!(allowed.as_deref(), Some("https://app.example"));
    let (status, allowed) = ask(server.app(), "GET", "https://app.example", true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(allowed.as_deref(), Some("https://app.example"));
    let (_, allowed) = ask(server.app(), "GET", "https://evil.example", true).await;
    assert_eq!(allowed, None, "another origin is not allowed");
    server.stop().await;
}

/// Every error is RFC 9457 problem details (`application/problem+json`), the router's own
/// too: no route, a method not allowed (with `Allow`), a query that does not parse, a body that
/// is not JSON (`415`), and a field of the wrong type (named in `field`).
#[tokio::test]
async fn every_error_is_problem_details() {
    let (_backend, store, _db) = test_stores("api_problems").await.remove(0);
    let server = TestServer::start(store, ApiConfig::default(), 0).await;
    let ask = |method: &'static str,
               uri: &'static str,
               content_type: Option<&'static str>,
               body: &'static str| {
        let app = server.app();
        async move {
            let mut req = Request::builder().method(method).uri(uri);
            if let Some(t) = content_type {
                req = req.header("content-type", t);
            }
            let resp = app
                .oneshot(req.body(Body::from(body)).expect("req"))
                .await
                .expect("resp");
            let (status, headers) = (resp.status(), resp.headers().clone());
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .expect("body");
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            assert_eq!(
                headers.get("content-type").and_then(|t| t.to_str().ok()),
                Some("application/problem+json"),
                "{method} {uri}: {v}"
            );
            assert_eq!(v["status"], status.as_u16(), "{v}");
            assert_eq!(v["title"], status.canonical_reason().unwrap_or(""), "{v}");
            let code = v["code"].as_str().unwrap_or("").to_string();
            assert_eq!(v["type"], format!("urn:wasmjobs:problem:{code}"), "{v}");
            assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
            (status, headers, v)
        }
    };
    let (status, _, v) = ask("GET", "/v1/nothing", None, "").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, headers, v) = ask("DELETE", "/v1/jobs", None, "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(v["code"], "method_not_allowed");
    let allow = headers
        .get("allow")
        .and_then(|a| a.to_str().ok())
        .unwrap_or("");
    assert!(
        allow.contains("GET") && allow.contains("POST"),
        "Allow: {allow:?}"
    );
    let (status, _, v) = ask("GET", "/v1/jobs?limit=lots", None, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, _, v) = ask("POST", "/v1/jobs", Some("text/plain"), r#"{"module":"m"}"#).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        )
    );
    let (status, _, v) = ask(
        "POST",
        "/v1/jobs",
        Some("application/json"),
        r#"{"module": 5}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["field"], "module", "{v}");
    let (status, _, v) = ask("POST", "/v1/jobs", Some("application/json"), "{").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_json"))
    );
    server.stop().await;
}

/// A schedule's cron expression is read in its time zone: the listing shows the zone and the
/// next fire times, an hour apart in UTC from the same expression in UTC; an unknown zone is
/// refused with its name.
#[tokio::test]
async fn schedules_read_their_cron_in_their_time_zone() {
    for (backend, store, _db) in test_stores("api_sched_tz").await {
        let server = TestServer::start(store, ApiConfig::default(), 0).await;
        upload(&server, guests::NOOP, "noop").await;
        let add = |body: Value| {
            let server = &server;
            async move { post_json(server, "/v1/schedules", &body).await }
        };
        let (status, tokyo) =
            add(json!({"cron": "0 9 * * *", "tz": "Asia/Tokyo", "job": {"module": "noop"}})).await;
        assert_eq!(status, StatusCode::CREATED, "{backend}: {tokyo}");
        let (status, utc) = add(json!({"cron": "0 9 * * *", "job": {"module": "noop"}})).await;
        assert_eq!(status, StatusCode::CREATED, "{backend}: {utc}");
        assert_eq!(tokyo["tz"], "Asia/Tokyo", "{backend}");
        assert_eq!(utc["tz"], Value::Null, "{backend}");
        let runs = |v: &Value| -> Vec<i64> {
            v["next_runs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_i64)
                .collect()
        };
        let (t, u) = (runs(&tokyo), runs(&utc));
        assert_eq!((t.len(), u.len()), (5, 5), "{backend}: {tokyo} {utc}");
        assert_eq!(
            t[0],
            tokyo["next_run_at"].as_i64().unwrap_or(0),
            "{backend}"
        );
        // 09:00 in Tokyo (no daylight saving) is 00:00 UTC: nine hours before 09:00 UTC.
        for (a, b) in t.iter().zip(&u) {
            assert_eq!(
                (b - a).rem_euclid(86_400_000),
                9 * 3_600_000,
                "{backend}: {t:?} {u:?}"
            );
        }
        assert!(
            t.windows(2).all(|w| w[1] - w[0] == 86_400_000),
            "{backend}: {t:?}"
        );
        let (status, v) =
            add(json!({"cron": "0 9 * * *", "tz": "Mars/Olympus", "job": {"module": "noop"}}))
                .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{backend}: {v}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("Mars/Olympus"),
            "{v}"
        );
        server.stop().await;
    }
}

/// A schedule that fires every second, of jobs that take 2.5 s: with `skip` and `queue_one`
/// the jobs of one schedule never run at once; `queue_one` submits the kept tick as soon as
/// the previous job ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_ticks_are_skipped_or_kept_as_the_schedule_says() {
    for (backend, store, _db) in test_stores("api_sched_overlap").await {
        let server = TestServer::start(store.clone(), ApiConfig::default(), 4).await;
        upload(&server, guests::TESTJOB, "testjob").await;
        let mut ids = Vec::new();
        for overlap in ["skip", "queue_one"] {
            let body = json!({
                "cron": "* * * * * *", "overlap": overlap, "name": overlap,
                "job": {"module": "testjob", "input": {"mode": "sleep", "ms": 2500}},
            });
            let (status, v) = post_json(&server, "/v1/schedules", &body).await;
            assert_eq!(status, StatusCode::CREATED, "{backend}: {v}");
            assert_eq!(v["overlap"], overlap, "{backend}");
            ids.push(v["id"].as_i64().unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(6500)).await;
        for id in &ids {
            let (_, v) = call(
                server.app(),
                "DELETE",
                &format!("/v1/schedules/{id}"),
                Body::empty(),
                None,
            )
            .await;
            assert_eq!(v, Value::Null, "{backend}");
        }
        let jobs = store
            .list_jobs(&wasmjobs::store::JobFilter {
                limit: 100,
                ..wasmjobs::store::JobFilter::default()
            })
            .await
            .expect("list");
        for (name, id) in ["skip", "queue_one"].into_iter().zip(&ids) {
            let prefix = format!("sys/schedule/{id}/");
            let mut mine: Vec<_> = jobs
                .iter()
                .filter(|j| {
                    j.idempotency_key
                        .as_deref()
                        .is_some_and(|k| k.starts_with(&prefix))
                })
                .collect();
            mine.sort_by_key(|j| j.id);
            // Ticks every second for 6.5 s; a job takes 2.5 s: about 2 or 3 jobs, not 6.
            assert!(
                (2..=3).contains(&mine.len()),
                "{backend} {name}: {} jobs",
                mine.len()
            );
            let mut spans = Vec::new();
            for j in &mine {
                let attempts = store.attempts(j.id).await.expect("attempts");
                if let Some(a) = attempts.first() {
                    spans.push((a.started_at, a.finished_at.unwrap_or(i64::MAX)));
                }
            }
            for w in spans.windows(2) {
                assert!(
                    w[1].0 >= w[0].1,
                    "{backend} {name}: jobs ran at once: {spans:?}"
                );
            }
            if name == "queue_one" {
                // The kept tick goes once the previous job ended (within the cron's second).
                let gap = mine[1].created_at - spans[0].1;
                assert!(
                    (0..=1500).contains(&gap),
                    "{backend}: kept tick came {gap} ms after: {spans:?}"
                );
            }
        }
        server.stop().await;
    }
}

/// A schedule may start a workflow run each tick: a run of a workflow whose one node takes
/// 2.5 s, every second with `skip`, starts runs that never overlap, the schedule shows its
/// last run, and its target; a schedule with neither or both of `job` and `workflow`, or of an
/// unknown workflow, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_starts_workflow_runs_that_its_overlap_policy_keeps_apart() {
    for (backend, store, _db) in test_stores("api_sched_runs").await {
        let server = TestServer::start(store.clone(), ApiConfig::default(), 2).await;
        upload(&server, guests::TESTJOB, "testjob").await;
        let (status, v) = post_json(
            &server,
            "/v1/workflows",
            &json!({"name": "nap", "nodes": [{"name": "sleep", "module": "testjob"}]}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{backend}: {v}");
        for (body, says) in [
            (
                json!({"cron": "* * * * * *"}),
                "job or workflow is required",
            ),
            (
                json!({"cron": "* * * * * *", "job": {"module": "testjob"}, "workflow": {"name": "nap"}}),
                "not both",
            ),
            (
                json!({"cron": "* * * * * *", "workflow": {"name": "nope"}}),
                "workflow",
            ),
            (
                json!({"cron": "* * * * * *", "workflow": {"name": "nap", "version": 0}}),
                "workflow.version",
            ),
        ] {
            let (status, v) = post_json(&server, "/v1/schedules", &body).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{backend}: {body} -> {v}"
            );
            assert!(
                v["detail"].as_str().is_some_and(|d| d.contains(says)),
                "{backend}: {body} -> {v}"
            );
        }
        let body = json!({
            "cron": "* * * * * *", "overlap": "skip", "name": "naps",
            "workflow": {"name": "nap", "input": {"mode": "sleep", "ms": 2500}},
        });
        let (status, v) = post_json(&server, "/v1/schedules", &body).await;
        assert_eq!(status, StatusCode::CREATED, "{backend}: {v}");
        assert_eq!(v["target"]["workflow"]["name"], "nap", "{backend}: {v}");
        let id = v["id"].as_i64().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(5500)).await;
        let (_, listed) = call(server.app(), "GET", "/v1/schedules", Body::empty(), None).await;
        let (_, gone) = call(
            server.app(),
            "DELETE",
            &format!("/v1/schedules/{id}"),
            Body::empty(),
            None,
        )
        .await;
        assert_eq!(gone, Value::Null, "{backend}");
        let (_, runs) = call(
            server.app(),
            "GET",
            "/v1/workflow-runs?workflow=nap",
            Body::empty(),
            None,
        )
        .await;
        let mut runs: Vec<Value> = runs["runs"].as_array().cloned().unwrap_or_default();
        runs.sort_by_key(|r| r["id"].as_i64());
        // Ticks every second for 5.5 s, a run takes 2.5 s: two runs, not five.
        assert!(
            (1..=2).contains(&runs.len()),
            "{backend}: {} runs: {runs:?}",
            runs.len()
        );
        for w in runs.windows(2) {
            let (ended, next) = (w[0]["finished_at"].as_i64(), w[1]["created_at"].as_i64());
            assert!(
                ended.is_some_and(|e| next.is_some_and(|n| n >= e)),
                "{backend}: runs of a skip schedule overlapped: {runs:?}"
            );
        }
        let schedule = listed["schedules"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["id"] == id))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            schedule["last_run"],
            runs.last().map_or(Value::Null, |r| r["id"].clone()),
            "{backend}: {schedule}"
        );
        assert_eq!(schedule["last_job"], Value::Null, "{backend}");
        // The run got the schedule's input: its node slept.
        let first = runs[0]["id"].as_i64().unwrap_or(0);
        let until = std::time::Instant::now() + Duration::from_secs(20);
        let run = loop {
            let (_, run) = call(
                server.app(),
                "GET",
                &format!("/v1/workflow-runs/{first}"),
                Body::empty(),
                None,
            )
            .await;
            if run["state"] != "running" || std::time::Instant::now() > until {
                break run;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(run["state"], "succeeded", "{backend}: {run}");
        server.stop().await;
    }
}
