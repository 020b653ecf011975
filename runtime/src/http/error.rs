//! One error shape for every route: `{"error": {"code": "...", "message": "..."}}` with the
//! matching status. Every error the API returns goes through [`ApiError`].

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::admission::Refusal;
use crate::service::ServiceError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

/// Every error: `{"error": {"code", "message"}}`.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Machine-readable, e.g. `invalid_json`, `not_found`, `over_cap`.
    code: String,
    /// For people: names the field and value at fault.
    message: String,
}

impl From<ApiError> for ErrorDetail {
    fn from(e: ApiError) -> ErrorDetail {
        ErrorDetail {
            code: e.code.to_string(),
            message: e.message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let body = Json(ErrorBody { error: self.into() });
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // The store is briefly out of reach: clients may come back in a moment.
            return (status, [(axum::http::header::RETRY_AFTER, "1")], body).into_response();
        }
        (status, body).into_response()
    }
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

/// [`parse_json`], on a blocking thread when the body is large.
pub async fn parse_json_body<T>(body: axum::body::Bytes) -> Result<T, ApiError>
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

/// Parses a JSON body with serde's message (which names the field and position) on failure.
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
        let message = if path.is_empty() || path == "." {
            format!("invalid request body: {inner}")
        } else {
            format!("invalid request body: {path}: {inner}")
        };
        ApiError::new(
            status,
            if syntax { "malformed_json" } else { "invalid" },
            message,
        )
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
