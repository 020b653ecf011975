//! `GET /v1/queues`, `POST /v1/queues/{name}/pause`, `POST /v1/queues/{name}/resume`.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState};
use crate::store::queues::check_queue_name;
use crate::store::{QueueInfo, QueueSettings, now_ms};

/// A queue: its settings and its jobs that have not ended.
#[derive(Serialize, ToSchema)]
pub(crate) struct QueueView {
    name: String,
    /// Its share of a node's slots among the queues with work: weight / Σ weights.
    weight: u32,
    /// At most this many of its jobs run at once, across every node; none if unlimited.
    max_running: Option<u32>,
    /// At most this many starts per unit of time, across every node (`"100/s"`); none if
    /// unlimited.
    rate: Option<String>,
    /// Nothing is started from it; submissions are still taken.
    paused: bool,
    /// Jobs ready to run (its depth).
    queued: u64,
    /// Jobs waiting for their time (`run_at` or a retry's backoff).
    scheduled: u64,
    running: u64,
}

impl From<QueueInfo> for QueueView {
    fn from(q: QueueInfo) -> QueueView {
        let QueueSettings {
            name,
            weight,
            max_running,
            rate,
            paused,
        } = q.settings;
        QueueView {
            name,
            weight,
            max_running,
            rate: rate.map(|r| r.to_string()),
            paused,
            queued: q.queued,
            scheduled: q.scheduled,
            running: q.running,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct QueueList {
    queues: Vec<QueueView>,
}

/// Every queue that is declared, paused, or has jobs that have not ended, by name.
#[utoipa::path(
    get,
    path = "/queues",
    operation_id = "listQueues",
    tag = "queues",
    responses(
        (status = 200, description = "The queues", body = crate::http::openapi::QueueList),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<QueueList>, ApiError> {
    let queues = state.service.store.queues().await?;
    Ok(Json(QueueList {
        queues: queues.into_iter().map(QueueView::from).collect(),
    }))
}

/// Pause a queue: its jobs stay where they are and nothing more starts from it, on any node,
/// until it is resumed (running jobs go on).
#[utoipa::path(
    post,
    path = "/queues/{name}/pause",
    operation_id = "pauseQueue",
    tag = "queues",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,64}$", description = "The queue's name")),
    responses(
        (status = 200, description = "Paused", body = crate::http::openapi::QueueView),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such queue", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QueueView>, ApiError> {
    set_paused(&state, &name, true).await
}

/// Resume a paused queue.
#[utoipa::path(
    post,
    path = "/queues/{name}/resume",
    operation_id = "resumeQueue",
    tag = "queues",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,64}$", description = "The queue's name")),
    responses(
        (status = 200, description = "Resumed", body = crate::http::openapi::QueueView),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such queue", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QueueView>, ApiError> {
    set_paused(&state, &name, false).await
}

async fn set_paused(
    state: &AppState,
    name: &str,
    paused: bool,
) -> Result<Json<QueueView>, ApiError> {
    check_queue_name(name).map_err(ApiError::bad_request)?;
    let Some(info) = state
        .service
        .store
        .set_queue_paused(name, paused, now_ms())
        .await?
    else {
        return Err(ApiError::not_found(format!(
            "unknown queue {name:?}: no process declares it ([queues.{name}] in wasmjobs.toml) and no job that has not ended is in it"
        )));
    };
    if paused {
        tracing::info!(queue = name, "queue {name} paused");
    } else {
        tracing::info!(queue = name, "queue {name} resumed");
    }
    Ok(Json(info.into()))
}
