//! Webhooks through the API: creation (the secret shown once), listing, changes, deletion,
//! and the errors for bad URLs (private targets included), event types, filters and queries.

use super::*;

#[tokio::test]
async fn webhooks_are_created_listed_changed_and_deleted_with_clear_errors() {
    for (backend, store, _db) in test_stores("api_webhooks").await {
        let server = TestServer::start(store, ApiConfig::default(), 0).await;
        let (status, created) = post_json(
            &server,
            "/v1/webhooks",
            &json!({"url": "https://hooks.example.com/in", "events": ["job.failed", "run.*", "job.failed"],
                    "queue": "bulk", "description": "alerts"}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{backend}: {created}");
        let id = created["id"].as_i64().expect("id");
        let secret = created["secret"].as_str().expect("the secret, once");
        assert!(
            secret.starts_with("whsec_") && secret.len() > 40,
            "{secret}"
        );
        assert_eq!(created["events"], json!(["job.failed", "run.*"]));
        assert_eq!(created["enabled"], true);

        let (_, list) = call(server.app(), "GET", "/v1/webhooks", Body::empty(), None).await;
        assert_eq!(list["webhooks"].as_array().map(Vec::len), Some(1), "{list}");
        assert!(list["webhooks"][0].get("secret").is_none(), "{list}");
        let (_, one) = call(
            server.app(),
            "GET",
            &format!("/v1/webhooks/{id}"),
            Body::empty(),
            None,
        )
        .await;
        assert_eq!(one["url"], "https://hooks.example.com/in");
        assert!(one.get("secret").is_none(), "{one}");

        let patch = |body: Value| {
            let app = server.app();
            async move {
                call(
                    app,
                    "PATCH",
                    &format!("/v1/webhooks/{id}"),
                    Body::from(body.to_string()),
                    None,
                )
                .await
            }
        };
        let (status, off) = patch(json!({"enabled": false, "events": ["job.*"]})).await;
        assert_eq!(status, StatusCode::OK, "{off}");
        assert_eq!(off["enabled"], false);
        assert_eq!(off["events"], json!(["job.*"]));
        let (status, e) = patch(json!({"events": ["job.finished"]})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert_eq!(e["field"], "events");
        let (status, e) = patch(json!({"colour": "red"})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert!(e["detail"].as_str().unwrap_or("").contains("colour"), "{e}");

        // Bad creations, each naming what is wrong.
        for (body, field, says) in [
            (
                json!({"url": "http://127.0.0.1:9000/", "events": ["job.*"]}),
                "url",
                "allow_private_targets",
            ),
            (
                json!({"url": "http://169.254.169.254/latest", "events": ["job.*"]}),
                "url",
                "allow_private_targets",
            ),
            (
                json!({"url": "http://10.1.2.3/", "events": ["job.*"]}),
                "url",
                "allow_private_targets",
            ),
            (
                json!({"url": "http://localhost:8080/", "events": ["job.*"]}),
                "url",
                "allow_private_targets",
            ),
            (
                json!({"url": "http://[::1]/", "events": ["job.*"]}),
                "url",
                "allow_private_targets",
            ),
            (
                json!({"url": "ftp://example.com/", "events": ["job.*"]}),
                "url",
                "scheme",
            ),
            (
                json!({"url": "example.com", "events": ["job.*"]}),
                "url",
                "invalid url",
            ),
            (
                json!({"url": "https://example.com/", "events": []}),
                "events",
                "at least one",
            ),
            (
                json!({"url": "https://example.com/", "events": ["job.done"]}),
                "events",
                "job.succeeded",
            ),
            (
                json!({"url": "https://example.com/", "events": ["job.*"], "queue": "no spaces"}),
                "queue",
                "queue",
            ),
        ] {
            let (status, e) = post_json(&server, "/v1/webhooks", &body).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{backend} {body}: {e}"
            );
            assert_eq!(e["field"], field, "{body}: {e}");
            assert!(
                e["detail"].as_str().unwrap_or("").contains(says),
                "{body}: {e}"
            );
        }

        let (status, e) = call(
            server.app(),
            "GET",
            &format!("/v1/webhooks/{id}/deliveries?state=lost"),
            Body::empty(),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
        assert!(
            e["detail"]
                .as_str()
                .unwrap_or("")
                .contains("pending, delivered or dead"),
            "{e}"
        );
        let (status, d) = call(
            server.app(),
            "GET",
            &format!("/v1/webhooks/{id}/deliveries?state=dead"),
            Body::empty(),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{d}");
        assert_eq!(d["deliveries"], json!([]));
        let (status, e) = post_json(
            &server,
            &format!("/v1/webhooks/{id}/deliveries/99/redeliver"),
            &json!({}),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{e}");

        let (status, _) = call(
            server.app(),
            "DELETE",
            &format!("/v1/webhooks/{id}"),
            Body::empty(),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = call(
            server.app(),
            "GET",
            &format!("/v1/webhooks/{id}"),
            Body::empty(),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = call(
            server.app(),
            "DELETE",
            &format!("/v1/webhooks/{id}"),
            Body::empty(),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        server.stop().await;
    }
}

/// Webhooks send everyone's events out: only an admin token may read or change them.
#[tokio::test]
async fn webhooks_need_an_admin_token() {
    let (_backend, store, _db) = test_stores("api_webhook_scope")
        .await
        .into_iter()
        .next()
        .expect("a SQLite store");
    let tokens = vec![
        Token::from_secret("ro", "read-secret", Scope::Read),
        Token::from_secret("ci", "submit-secret", Scope::Submit),
        Token::from_secret("root", "admin-secret", Scope::Admin),
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
    let body = json!({"url": "https://example.com/", "events": ["job.*"]}).to_string();
    for token in ["read-secret", "submit-secret"] {
        let (status, _) = call(
            server.app(),
            "GET",
            "/v1/webhooks",
            Body::empty(),
            Some(token),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{token}");
        let (status, _) = call(
            server.app(),
            "POST",
            "/v1/webhooks",
            Body::from(body.clone()),
            Some(token),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{token}");
    }
    let (status, v) = call(
        server.app(),
        "POST",
        "/v1/webhooks",
        Body::from(body),
        Some("admin-secret"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    server.stop().await;
}
