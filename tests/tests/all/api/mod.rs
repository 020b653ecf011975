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

mod jobs;
mod modules;
mod retries;
mod service;
mod streams;
mod webhooks;

pub(crate) async fn call_raw(
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

pub(crate) async fn call(
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

pub(super) async fn upload(server: &TestServer, wasm: &str, name: &str) -> Value {
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

pub(super) async fn submit(server: &TestServer, body: Value) -> (StatusCode, Value) {
    post_json(server, "/v1/jobs", &body).await
}

pub(super) async fn post_json(server: &TestServer, uri: &str, body: &Value) -> (StatusCode, Value) {
    call(
        server.app(),
        "POST",
        uri,
        Body::from(body.to_string()),
        None,
    )
    .await
}

pub(crate) async fn wait_final(server: &TestServer, id: i64, within: Duration) -> Value {
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

pub(super) async fn submit_batch(server: &TestServer, body: &Value) -> (StatusCode, Value) {
    post_json(server, "/v1/jobs/batch", body).await
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
