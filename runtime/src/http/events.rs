//! `GET /v1/jobs/{id}/events`: Server-Sent Events. The job's history first, then live events,
//! then (once the job is final) its output and an `end` event, then the stream closes. Event ids
//! are the job's event sequence numbers, so `Last-Event-ID` resumes with no loss and no
//! duplicates. Works across nodes: notices come through the store (Postgres LISTEN/NOTIFY).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::jobs::{output_view, parse_id};
use super::{ApiError, AppState};
use crate::store::{Event, JobId, JobState};

/// Follow a job live (Server-Sent Events): its history, then live state changes, logs,
/// progress, the output and an `end` event; then the stream closes. Send `Last-Event-ID` to
/// resume.
#[utoipa::path(
    get,
    path = "/jobs/{id}/events",
    operation_id = "followJob",
    tag = "jobs",
    params(
        ("id" = i64, Path, minimum = 1, description = "The job id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
    ),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = crate::http::openapi::SseEventDoc),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let id = parse_id("job", &id)?;
    let after = last_event_id(&headers)?;
    if state.service.store.get_job(id).await?.is_none() {
        return Err(ApiError::not_found(format!("job {id} not found")));
    }
    // Follow before the first read: a change between the two is not lost.
    let watch = state.service.watchers.watch(id);
    let (tx, rx) = mpsc::channel(256);
    let _ = tx.try_send(Ok(reconnect_hint()));
    tokio::spawn(async move {
        if let Err(e) = pump(&state, id, after, watch, &tx).await {
            let _ = tx
                .send(Ok(SseEvent::default()
                    .event("error")
                    .data(json!({ "message": e.message }).to_string())))
                .await;
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// How long a client whose stream dropped waits before it reconnects (with `Last-Event-ID`).
const RECONNECT_AFTER: Duration = Duration::from_secs(2);

/// The first message of every stream: only the `retry:` field, which tells a client (an
/// `EventSource`) how long to wait before reconnecting; it dispatches no event.
pub(super) fn reconnect_hint() -> SseEvent {
    SseEvent::default().retry(RECONNECT_AFTER)
}

/// The `Last-Event-ID` a reconnecting client sends: where to resume (0 without one).
pub(super) fn last_event_id(headers: &HeaderMap) -> Result<i64, ApiError> {
    match headers
        .get("last-event-id")
        .map(|v| v.to_str().map(str::trim))
    {
        None => Ok(0),
        Some(Ok(v)) => v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid Last-Event-ID {v:?}: expected an event id from this stream"
            ))
        }),
        Some(Err(_)) => Err(ApiError::bad_request("invalid Last-Event-ID header")),
    }
}

fn to_sse(e: &Event) -> SseEvent {
    let mut data = e.data.clone();
    data["at"] = json!(e.at);
    SseEvent::default()
        .id(e.seq.to_string())
        .event(e.kind.as_str())
        .data(data.to_string())
}

fn is_final_state(e: &Event) -> bool {
    e.kind == "state"
        && e.data["state"]
            .as_str()
            .and_then(|s| s.parse::<JobState>().ok())
            .is_some_and(JobState::is_final)
}

/// Sends history then live events until the job is final; returns when the client is gone.
async fn pump(
    state: &AppState,
    id: JobId,
    mut after: i64,
    mut watch: crate::watch::JobWatch,
    tx: &mpsc::Sender<Result<SseEvent, Infallible>>,
) -> Result<(), ApiError> {
    let store = &state.service.store;
    loop {
        let events = store.events(id, after, 500).await?;
        let mut finished = false;
        for e in &events {
            after = e.seq;
            if tx.send(Ok(to_sse(e))).await.is_err() {
                return Ok(());
            }
            finished |= is_final_state(e);
        }
        // The job as it stands once its final event has been sent: read once, when needed.
        let mut done = None;
        if !finished && events.is_empty() {
            // Resumed after the final event, or the job finished between reads.
            let job = store
                .get_job(id)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("job {id} not found")))?;
            if job.state.is_final() && store.events(id, after, 1).await?.is_empty() {
                done = Some(job);
            }
        } else if finished {
            done = Some(
                store
                    .get_job(id)
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("job {id} not found")))?,
            );
        }
        if let Some(job) = done {
            let output = match output_view(job.output.as_deref()) {
                Some(view) => serde_json::to_string(&view).map_err(ApiError::internal)?,
                None => "{}".to_string(),
            };
            let _ = tx
                .send(Ok(SseEvent::default().event("output").data(output)))
                .await;
            let end = json!({ "state": job.state, "outcome": job.outcome, "error": job.error });
            let _ = tx
                .send(Ok(SseEvent::default().event("end").data(end.to_string())))
                .await;
            return Ok(());
        }
        if events.len() == 500 {
            continue;
        }
        // Wait for this job's next events (or poll, in case a notice was missed).
        let _ = tokio::time::timeout(Duration::from_secs(2), watch.changed()).await;
        if tx.is_closed() {
            return Ok(());
        }
    }
}
