//! `POST /v1/schedules` `{cron, job, name?}`, `GET /v1/schedules`, `DELETE /v1/schedules/{id-or-name}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::caller::Caller;
use crate::scheduler::next_after;
use crate::service::SubmitJob;
use crate::store::now_ms;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddSchedule {
    cron: String,
    /// The job to submit on each tick (the body of `POST /v1/jobs`).
    job: SubmitJob,
    name: Option<String>,
}

/// Add a cron schedule that submits a job each tick.
#[utoipa::path(
    post,
    path = "/schedules",
    tag = "schedules",
    request_body = crate::http::openapi::ScheduleRequest,
    responses(
        (status = 201, description = "Added", body = crate::http::openapi::ScheduleView),
        (status = 400, description = "Bad request", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "Body over the size limit", body = crate::http::openapi::ErrorBody),
        (status = 415, description = "Not JSON", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "A bad cron expression, an unknown module, or a bad job", body = crate::http::openapi::ErrorBody),
    )
)]
pub(super) async fn add(
    State(state): State<AppState>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body.map_err(super::error::body_rejection)?;
    let req: AddSchedule = super::error::parse_json(&body)?;
    crate::service::storable("cron", &req.cron)?;
    if let Some(name) = &req.name {
        crate::service::storable("name", name)?;
    }
    if req.job.idempotency_key.is_some() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "job.idempotency_key: a schedule gives each tick's job a key of its own; leave it out",
        ));
    }
    // What each tick will submit is checked now, as a submission would be (and again at each
    // tick, against the policy in force then).
    state.service.check(&req.job)?;
    crate::scheduler::cron_parse(&req.cron)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", m))?;
    let now = now_ms();
    let next = next_after(&req.cron, now).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("cron expression {:?} never fires", req.cron),
        )
    })?;
    if state
        .service
        .store
        .get_module(&req.job.module)
        .await?
        .is_none()
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_module",
            format!("unknown module {:?}", req.job.module),
        ));
    }
    let target =
        serde_json::to_value(&req.job).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let s = state
        .service
        .store
        .add_schedule(req.name, &req.cron, target, next, now)
        .await?;
    Ok((StatusCode::CREATED, Json(json!(s))))
}

/// Every schedule.
#[utoipa::path(
    get,
    path = "/schedules",
    tag = "schedules",
    responses(
        (status = 200, description = "The schedules", body = crate::http::openapi::ScheduleList),
        (status = 400, description = "Bad request", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::ErrorBody),
    )
)]
pub(super) async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let mut schedules = json!(state.service.store.list_schedules().await?);
    if let Some(all) = schedules.as_array_mut() {
        for s in all {
            super::redact_grants(&mut s["target"]["grants"], &caller);
        }
    }
    Ok(Json(json!({ "schedules": schedules })))
}

/// Delete a schedule by id or name.
#[utoipa::path(
    delete,
    path = "/schedules/{key}",
    tag = "schedules",
    params(("key" = String, Path, description = "The schedule's id or name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Bad request", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such schedule", body = crate::http::openapi::ErrorBody),
    )
)]
pub(super) async fn delete(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.service.store.delete_schedule(&key).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("schedule {key:?} not found")))
    }
}
