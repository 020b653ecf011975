//! One error shape for every route: RFC 9457 problem details, `application/problem+json`:
//! `{"type", "title", "status", "detail", "code", "field"?}` with the matching status. Every
//! error a handler returns goes through [`ApiError`]; [`problems`] gives the same shape to the
//! bare errors the router itself answers (no route, a method not allowed, a path or query that
//! does not parse, a body sent too slowly).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::admission::Refusal;
use crate::service::ServiceError;
use crate::store::StoreError;

/// The media type of every error body (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The request field at fault (`limits.fuel`), when one is.
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// The same error, naming the request field at fault.
    pub fn at(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

/// Every error (RFC 9457 problem details).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Problem {
    /// A URI naming the kind of problem, one per `code`: `urn:wasmjobs:problem:<code>`.
    #[serde(rename = "type")]
    kind: String,
    /// The status's reason phrase, e.g. `Not Found`.
    title: String,
    /// The HTTP status.
    status: u16,
    /// For people: says what is wrong, naming the field and value at fault.
    detail: String,
    /// Machine-readable, e.g. `malformed_json`, `not_found`, `over_policy_cap`.
    code: String,
    /// The request field at fault, when one is (`limits.fuel`, `jobs[2].module`).
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

impl From<ApiError> for Problem {
    fn from(e: ApiError) -> Problem {
        Problem {
            kind: format!("urn:wasmjobs:problem:{}", e.code),
            title: e.status.canonical_reason().unwrap_or("Error").to_string(),
            status: e.status.as_u16(),
            detail: e.message,
            code: e.code.to_string(),
            field: e.field,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let mut response = (status, Json(Problem::from(self))).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // The store is briefly out of reach: clients may come back in a moment.
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Gives the errors the router answers by itself (a `405` with an empty body, a path, query or
/// body rejection as plain text) the one error shape, keeping their status and headers
/// (`Allow`). Successes and JSON answers pass untouched.
pub(super) async fn problems(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().clone();
    let response = next.run(req).await;
    let status = response.status();
    // A JSON body is the handler's own answer (a problem, or `/readyz` saying why it is not
    // ready); the router's errors are empty or plain text.
    let is_json = |t: &HeaderValue| {
        let t = t.to_str().unwrap_or("");
        t.starts_with("application/json") || t.starts_with(PROBLEM_JSON)
    };
    if !(status.is_client_error() || status.is_server_error())
        || response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(is_json)
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (code, detail) = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = parts
                .headers
                .get(header::ALLOW)
                .and_then(|a| a.to_str().ok())
                .unwrap_or("")
                .replace(',', ", ");
            (
                "method_not_allowed",
                format!("{method} is not allowed here; allowed: {allowed}"),
            )
        }
        StatusCode::NOT_FOUND => ("not_found", text),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", text),
        StatusCode::PAYLOAD_TOO_LARGE => ("too_large", text),
        StatusCode::REQUEST_TIMEOUT => (
            "timeout",
            "the request's body did not arrive in time".to_string(),
        ),
        _ if status.is_server_error() => ("internal", text),
        _ => ("bad_request", text),
    };
    let detail = if detail.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        detail
    };
    let mut problem = ApiError::new(status, code, detail).into_response();
    // Keep what the router said besides its body (`Allow` on a 405).
    for (name, value) in parts.headers.drain().filter_map(|(n, v)| Some((n?, v))) {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem.headers_mut().insert(name, value);
        }
    }
    problem
}

impl ApiError {
    /// A failure of the server's own, not of the request: the detail (which may hold SQL or a
    /// driver's message) goes to the log, throttled, and the client gets only what kind of
    /// failure it was.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        crate::throttle::error(format!("request failed: {detail}"));
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to handle this request; the details are in its log",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound { .. } => ApiError::not_found(e.to_string()),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            StoreError::Unavailable(m) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the store cannot take this now ({m}); try again shortly"),
            ),
            other => ApiError::internal(other),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        match e {
            ServiceError::Invalid(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", m)
            }
            ServiceError::Refused(r) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                match r {
                    Refusal::OverCap { .. } => "over_policy_cap",
                    Refusal::NotAllowed { .. } => "not_allowed_by_policy",
                },
                r.to_string(),
            ),
            ServiceError::UnknownModule(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_module",
                e.to_string(),
            ),
            ServiceError::KeyReused(m) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                m,
            ),
            ServiceError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            ServiceError::Store(s) => s.into(),
        }
    }
}

/// Bodies up to this size are parsed on the request's own task; larger ones on a blocking
/// thread, so that a client sending many large bodies delays no other request.
const PARSE_INLINE_BYTES: usize = 256 << 10;

/// A JSON route's body: refused with `415` when its `Content-Type` says it is something else
/// (a missing one is taken as JSON), then parsed as [`parse_json`], on a blocking thread when
/// it is large.
pub async fn parse_json_body<T>(
    headers: &axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<T, ApiError>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    require_json(headers)?;
    parse_json_off_thread(body).await
}

/// [`parse_json`], on a blocking thread when the body is large (for a route that checked the
/// media type itself).
pub async fn parse_json_off_thread<T>(body: axum::body::Bytes) -> Result<T, ApiError>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    if body.len() <= PARSE_INLINE_BYTES {
        return parse_json(&body);
    }
    tokio::task::spawn_blocking(move || parse_json(&body))
        .await
        .map_err(ApiError::internal)?
}

/// Refuses a body whose `Content-Type` is not JSON (`application/json` or `…+json`) with `415`.
pub fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "this route takes JSON: send Content-Type: application/json (got {:?})",
            value.to_str().unwrap_or("?")
        ),
    ))
}

/// Parses a JSON body with serde's message (which names the field and position) on failure;
/// the error names the field at fault.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty: expected a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let syntax = inner.is_syntax() || inner.is_eof();
        let status = if syntax {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        let at_root = path.is_empty() || path == ".";
        let message = if at_root {
            format!("invalid request body: {inner}")
        } else {
            format!("invalid request body: {path}: {inner}")
        };
        let error = ApiError::new(
            status,
            if syntax { "malformed_json" } else { "invalid" },
            message,
        );
        if at_root || syntax {
            error
        } else {
            error.at(path)
        }
    })?;
    de.end().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("invalid request body: {e}"),
        )
    })?;
    Ok(value)
}

/// A body that could not be read: over the size limit (`413`, said without reading the rest) or
/// broken off.
pub fn body_rejection(e: axum::extract::rejection::BytesRejection) -> ApiError {
    let status = e.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "too_large"
    } else {
        "bad_body"
    };
    ApiError::new(status, code, e.body_text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_failure_answers_without_its_detail() {
        let e = ApiError::from(StoreError::Corrupt(
            "SELECT secret FROM jobs WHERE id = 1: relation does not exist".into(),
        ));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !e.message.contains("SELECT") && e.message.contains("log"),
            "{}",
            e.message
        );
        let e = ApiError::from(StoreError::Unavailable("the disk is full".into()));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let e = ApiError::from(StoreError::NotFound {
            what: "job",
            id: "7".into(),
        });
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert!(e.message.contains("job 7"), "{}", e.message);
    }
}
