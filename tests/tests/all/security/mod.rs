//! What a hostile API client or job author can do to the server around the sandbox, each on
//! both store backends where a store is involved: grants that would escape the allowed
//! directories, event floods, parser bombs, held connections, hijacked module names, squatted
//! idempotency keys, unbounded retry policies, upload floods, unstorable text. Each test
//! reproduces the attack and checks that it now fails to harm (docs/security.md).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::StatusCode;
use serde_json::{Value, json};
use wasmjobs::admission::AdmissionPolicy;
use wasmjobs::caller::Caller;
use wasmjobs::http::{ApiConfig, ConnectionLimits, Scope, Token};
use wasmjobs::service::SubmitJob;
use wasmjobs_tests::{TestServer, guest_bytes, guests, test_stores};

pub(super) use crate::api::{call, call_raw, wait_final};

mod requests;
mod stored;

pub(super) async fn upload_as(
    server: &TestServer,
    wasm: &str,
    name: &str,
    token: Option<&str>,
) -> StatusCode {
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

pub(super) async fn submit_as(
    server: &TestServer,
    body: &Value,
    token: Option<&str>,
) -> (StatusCode, Value) {
    call(
        server.app(),
        "POST",
        "/v1/jobs",
        Body::from(body.to_string()),
        token,
    )
    .await
}

pub(super) fn message(v: &Value) -> &str {
    v["detail"].as_str().unwrap_or("")
}

/// A directory tree for grants: `allowed/` (the policy's one allowed directory) holding
/// `sub/in.txt`, and `secret/in.txt` beside it.
pub(super) struct GrantDirs {
    _dir: tempfile::TempDir,
    allowed: std::path::PathBuf,
    secret: std::path::PathBuf,
}

pub(super) fn grant_dirs() -> GrantDirs {
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

pub(super) fn files_job(host: &std::path::Path) -> Value {
    json!({
        "module": "testjob",
        "input": {"mode": "files"},
        "grants": {"dirs": [{"host": host, "guest": "/data"}]},
        "retry": {"max_attempts": 1},
    })
}

pub(super) fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
