//! `GET /v1/stats`: the installation at a glance, for the dashboard's overview: jobs and runs
//! not yet ended, jobs ended per minute over the last hour, and each node's slots. Every part
//! reads only the live part of the store and the nodes' reports ([`crate::activity`]), so it
//! costs the same however many jobs have ended.

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::{ApiError, AppState};
use crate::store::{MinuteEnds, NodeActivity, now_ms};

/// How far back the minutes go.
const LAST_MS: i64 = 60 * 60 * 1000;
/// A node that has not reported for this long is left out (several report intervals).
const SEEN_WITHIN_MS: i64 = 10_000;

/// The installation at a glance.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Stats {
    /// Jobs waiting and running.
    jobs: UnfinishedJobs,
    /// Workflow runs not yet ended.
    runs: ActiveRuns,
    /// Jobs ended per minute over the last hour, oldest first, summed over the nodes
    /// (minutes without an end are left out). Each node reports every 2 s.
    minutes: Vec<MinuteEnds>,
    /// The nodes that reported in the last 10 s: their slots and how many are busy.
    nodes: Vec<NodeActivity>,
    /// When this was read (ms since the epoch).
    at: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct UnfinishedJobs {
    scheduled: u64,
    queued: u64,
    running: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ActiveRuns {
    running: u64,
    cancelling: u64,
}

#[utoipa::path(
    get,
    path = "/stats",
    operation_id = "getStats",
    tag = "service",
    responses(
        (status = 200, description = "The installation at a glance", body = Stats),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn get(State(state): State<AppState>) -> Result<Json<Stats>, ApiError> {
    let at = now_ms();
    let store = &state.service.store;
    let [(_, scheduled), (_, queued), (_, running)] = store.count_unfinished().await?;
    let [(_, runs_running), (_, cancelling)] = state.workflows.runs().count_active_runs().await?;
    let activity = store.activity(at - LAST_MS, at - SEEN_WITHIN_MS).await?;
    Ok(Json(Stats {
        jobs: UnfinishedJobs {
            scheduled,
            queued,
            running,
        },
        runs: ActiveRuns {
            running: runs_running,
            cancelling,
        },
        minutes: activity.minutes,
        nodes: activity.nodes,
        at,
    }))
}
