//! Bearer-token authentication. Tokens are configured by their SHA-256 hash (never stored in
//! clear) with a scope: `read` may GET, `submit` may also POST and DELETE, `admin` may do all.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Submit,
    Admin,
}

/// A configured token: its name (for logs), the hex SHA-256 of the secret, its scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub(super) async fn require(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let tokens = &state.config.tokens;
    // Liveness and the API's description are public.
    if tokens.is_empty() || matches!(req.uri().path(), "/healthz" | "/openapi.json") {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| hash(t.trim()));
    let Some(presented) = presented else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token: send Authorization: Bearer <token>",
        )
        .into_response();
    };
    let Some(token) = tokens
        .iter()
        .find(|t| t.sha256.eq_ignore_ascii_case(&presented))
    else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown bearer token",
        )
        .into_response();
    };
    let needed = if matches!(*req.method(), Method::GET | Method::HEAD) {
        Scope::Read
    } else {
        Scope::Submit
    };
    if token.scope < needed {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {:?} has scope {:?}; this request needs {:?}",
                token.name, token.scope, needed
            ),
        )
        .into_response();
    }
    next.run(req).await
}
