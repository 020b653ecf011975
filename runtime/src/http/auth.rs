//! Bearer-token authentication. Tokens are configured by their SHA-256 hash (never stored in
//! clear) with a scope: `read` may GET, `submit` may also POST (upload, submit, cancel, retry,
//! create workflows, start runs), `admin` may do all — schedules are admin's ([`needed`]).
//! Every request that passes carries its [`Caller`] as a request extension.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};

use crate::caller::Caller;
pub use crate::caller::Scope;

/// A configured token: its name (for logs, and as the owner of what it creates), the hex
/// SHA-256 of the secret, its scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub name: String,
    pub sha256: String,
    pub scope: Scope,
}

impl Token {
    /// A token entry for a secret (hashes it).
    pub fn from_secret(name: &str, secret: &str, scope: Scope) -> Token {
        Token {
            name: name.to_string(),
            sha256: hash(secret),
            scope,
        }
    }
}

impl Token {
    /// Checks a configured entry: a name of `[A-Za-z0-9_.-]`, 1 to 64 characters, and a hash
    /// of 64 hex digits (what `sha256sum` prints), so that an entry that could never match
    /// is refused at start instead of failing every request.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !name_ok {
            return Err(format!(
                "token name {:?} must be 1 to 64 characters of A-Z, a-z, 0-9, _, . and -",
                self.name
            ));
        }
        if self.sha256.len() != 64 || !self.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "token {:?}: sha256 must be 64 hex digits (the SHA-256 of the secret), got {} characters",
                self.name,
                self.sha256.len()
            ));
        }
        Ok(())
    }
}

pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The scope a request needs: reading needs `read`, but for webhooks (whose URLs and
/// deliveries tell where the installation's events go); webhooks (which send everyone's
/// events out), schedules (which run on their own, as the server, for as long as they exist)
/// and pausing or resuming queues (which steer everyone's jobs) need `admin`; every other
/// change needs `submit`.
fn needed(method: &Method, path: &str) -> Scope {
    if path == "/v1/webhooks" || path.starts_with("/v1/webhooks/") {
        Scope::Admin
    } else if matches!(*method, Method::GET | Method::HEAD) {
        Scope::Read
    } else if path == "/v1/schedules"
        || path.starts_with("/v1/schedules/")
        || path.starts_with("/v1/queues/")
    {
        Scope::Admin
    } else {
        Scope::Submit
    }
}

pub(super) async fn require(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let tokens = &state.config.tokens;
    if tokens.is_empty() {
        // No tokens: the server listens on loopback only, for one local user.
        req.extensions_mut().insert(Caller::local_admin());
        return next.run(req).await;
    }
    // Liveness, readiness, the API's description and the dashboard's page (which holds no
    // data: it asks for a token and reads the API with it) are public.
    let path = req.uri().path();
    if matches!(path, "/healthz" | "/readyz" | "/openapi.json" | "/") || path.starts_with("/ui/") {
        return next.run(req).await;
    }
    // RFC 6750: the scheme is case-insensitive; the token follows one or more spaces.
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| hash(token.trim()));
    let Some(presented) = presented else {
        return unauthorized(
            "missing bearer token: send Authorization: Bearer <token>",
            r#"Bearer realm="wasmjobs""#,
        );
    };
    let Some(token) = tokens
        .iter()
        .find(|t| t.sha256.eq_ignore_ascii_case(&presented))
    else {
        return unauthorized(
            "unknown bearer token",
            r#"Bearer realm="wasmjobs", error="invalid_token""#,
        );
    };
    let needed = needed(req.method(), req.uri().path());
    if token.scope < needed {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this request needs a token with scope {needed}; the token sent has scope {}",
                token.scope
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(Caller {
        token: Some(token.name.clone()),
        scope: token.scope,
    });
    next.run(req).await
}

/// A 401 with the `WWW-Authenticate` challenge that says how to authenticate (RFC 9110, 6750).
fn unauthorized(message: &str, challenge: &'static str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static(challenge),
    );
    response
}
