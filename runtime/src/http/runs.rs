//! Workflow runs: `POST /v1/workflows/{name}/runs`, `GET /v1/workflow-runs/{id}`,
//! `GET /v1/workflow-runs/{id}/events` (SSE), `POST /v1/workflow-runs/{id}/cancel`.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::jobs::parse_id;
use super::{ApiError, AppState};
use crate::store::{JobId, NodeRecord, NodeState, Notice, RunFilter, RunId, RunState};
use crate::workflow::WorkflowService;

// Ids are `i64` in these views rather than their aliases (`RunId`, `JobId`), which the
// document would show as schemas of their own.
/// A workflow run: its state, each node's, and its output once it succeeded.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RunView {
    id: i64,
    workflow: String,
    version: i64,
    state: RunState,
    error: Option<String>,
    cancel_requested: bool,
    deadline_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    finished_at: Option<i64>,
    /// In definition order.
    nodes: Vec<RunNodeView>,
    /// The output of the run's leaf node (an object keyed by leaf name when several
    /// succeeded); `null` until the run succeeded.
    #[schema(value_type = Option<Value>)]
    output: Option<Box<RawValue>>,
}

/// One node of a run.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RunNodeView {
    name: String,
    /// The module digest the run pinned.
    module: String,
    state: NodeState,
    needs: Vec<String>,
    /// The node's job (plain nodes, once started).
    job: Option<i64>,
    error: Option<String>,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    /// `for_each` nodes only.
    #[serde(skip_serializing_if = "Option::is_none")]
    items: Option<RunItemsView>,
}

/// The elements of a `for_each` node.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RunItemsView {
    total: i64,
    submitted: i64,
    done: i64,
    failed: i64,
    elements: Vec<RunElementView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RunElementView {
    index: i64,
    state: NodeState,
    job: Option<i64>,
}

/// A run as the API shows it: every node in definition order with its state and job (and
/// each element of a `for_each` node), and the output once the run succeeded. Built in time
/// linear in the run's size.
async fn run_view(workflows: &WorkflowService, id: RunId) -> Result<RunView, ApiError> {
    let snap = workflows
        .runs()
        .get_run(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("workflow run {id} not found")))?;
    // Without a usable definition (the run then fails, saying why), nodes are shown as
    // stored, by name.
    let def = workflows
        .definition(&snap.run.workflow, Some(snap.run.version))
        .await
        .ok()
        .map(|(_, def)| def);
    let order: Vec<(&str, &[String])> = match &def {
        Some(def) => def
            .definition
            .nodes
            .iter()
            .map(|d| (d.name.as_str(), d.needs.as_slice()))
            .collect(),
        None => snap
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), &[][..]))
            .collect(),
    };
    let by_name: HashMap<&str, &NodeRecord> =
        snap.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut nodes = Vec::with_capacity(order.len());
    for (name, needs) in order {
        let Some(n) = by_name.get(name) else {
            continue;
        };
        let items = match n.items_total {
            Some(total) => Some(RunItemsView {
                total,
                submitted: n.items_next,
                done: n.items_done,
                failed: n.items_failed,
                elements: workflows
                    .runs()
                    .items(id, &n.name)
                    .await?
                    .into_iter()
                    .map(|(index, state, job)| RunElementView { index, state, job })
                    .collect(),
            }),
            None => None,
        };
        nodes.push(RunNodeView {
            name: n.name.clone(),
            module: n.module.clone(),
            state: n.state,
            needs: needs.to_vec(),
            job: n.job_id,
            error: n.error.clone(),
            started_at: n.started_at,
            finished_at: n.finished_at,
            items,
        });
    }
    let output = match &def {
        Some(def) if snap.run.state == RunState::Succeeded => {
            Some(workflows.run_output(def, &by_name).await?)
        }
        _ => None,
    };
    let run = &snap.run;
    Ok(RunView {
        id: run.id,
        workflow: run.workflow.clone(),
        version: run.version,
        state: run.state,
        error: run.error.clone(),
        cancel_requested: run.cancel_requested,
        deadline_at: run.deadline_at,
        created_at: run.created_at,
        updated_at: run.updated_at,
        finished_at: run.finished_at,
        nodes,
        output,
    })
}

/// What `POST /v1/workflows/{name}/runs` takes.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartRun {
    /// The run's input as JSON: what the root nodes get.
    #[serde(default)]
    input: Option<Value>,
    /// The input as raw bytes, base64-encoded. Exclusive with `input`.
    #[serde(default)]
    input_base64: Option<String>,
    /// A version of the workflow (default: the latest).
    #[serde(default)]
    #[schema(minimum = 1)]
    version: Option<i64>,
}

/// A page of runs (`GET /v1/workflow-runs`), newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RunList {
    runs: Vec<RunSummary>,
    /// Pass as `cursor` for the next page; null on the last one.
    next_cursor: Option<String>,
}

/// A run in a list: its state, without its nodes (`GET /v1/workflow-runs/{id}` has them).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RunSummary {
    id: i64,
    workflow: String,
    version: i64,
    state: RunState,
    error: Option<String>,
    cancel_requested: bool,
    created_at: i64,
    updated_at: i64,
    finished_at: Option<i64>,
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    workflow: Option<String>,
    state: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// Runs, newest first, a page at a time: of one workflow, in one state.
#[utoipa::path(
    get,
    path = "/workflow-runs",
    operation_id = "listRuns",
    tag = "workflow-runs",
    params(
        ("workflow" = Option<String>, Query, description = "Only runs of this workflow"),
        ("state" = Option<RunState>, Query, description = "Only runs in this state"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1 to 1000 (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of runs", body = RunList),
        (status = 400, description = "Bad state, limit or cursor", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<RunList>, ApiError> {
    let run_state = q
        .state
        .as_deref()
        .map(|s| {
            s.parse::<RunState>().map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid state {s:?}: expected running, cancelling, succeeded, failed or cancelled"
                ))
            })
        })
        .transpose()?;
    let limit = super::page_limit(q.limit.as_deref())?;
    let filter = RunFilter {
        workflow: q.workflow,
        state: run_state,
        limit,
        cursor: super::page_cursor(q.cursor.as_deref())?,
    };
    let runs = state.workflows.runs().list_runs(&filter).await?;
    let next_cursor = (runs.len() == limit as usize)
        .then(|| runs.last().map(|r| r.id.to_string()))
        .flatten();
    let runs = runs
        .into_iter()
        .map(|r| RunSummary {
            id: r.id,
            workflow: r.workflow,
            version: r.version,
            state: r.state,
            error: r.error,
            cancel_requested: r.cancel_requested,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        })
        .collect();
    Ok(Json(RunList { runs, next_cursor }))
}

/// Start a run of a workflow on an input. The run pins the workflow's version and its
/// modules' digests.
#[utoipa::path(
    post,
    path = "/workflows/{name}/runs",
    operation_id = "startRun",
    tag = "workflow-runs",
    params(("name" = String, Path, description = "The workflow's name")),
    request_body(content = StartRun, description = "The run's input", example = json!({"input": {"text": "the quick brown fox"}})),
    responses(
        (status = 201, description = "The run, started", body = RunView),
        (status = 400, description = "Malformed JSON or input", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such workflow or version", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the size limit", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid, over the policy's caps, or a module is gone", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn start(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let body = body.map_err(super::error::body_rejection)?;
    let req: StartRun = super::error::parse_json_body(&headers, body).await?;
    if req.version.is_some_and(|v| v < 1) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "version must be a positive integer",
        ));
    }
    let input = crate::service::input_bytes(req.input.as_ref(), req.input_base64.as_deref())?;
    let (run, _) = state.workflows.start_run(&name, req.version, input).await?;
    Ok((
        StatusCode::CREATED,
        Json(run_view(&state.workflows, run.id).await?),
    ))
}

/// A run: its state, every node's state and job (and each `for_each` element), its output
/// once it succeeded.
#[utoipa::path(
    get,
    path = "/workflow-runs/{id}",
    operation_id = "getRun",
    tag = "workflow-runs",
    params(("id" = i64, Path, minimum = 1, description = "The run id")),
    responses(
        (status = 200, description = "The run", body = RunView),
        (status = 400, description = "Bad run id", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    let id = parse_id("workflow run", &id)?;
    Ok(Json(run_view(&state.workflows, id).await?))
}

/// Cancel a run: its pending nodes are cancelled and its running jobs stopped; the run ends
/// `cancelled` once they have.
#[utoipa::path(
    post,
    path = "/workflow-runs/{id}/cancel",
    operation_id = "cancelRun",
    tag = "workflow-runs",
    params(("id" = i64, Path, minimum = 1, description = "The run id")),
    responses(
        (status = 202, description = "Cancel requested; the run as it stands", body = RunView),
        (status = 400, description = "Bad run id", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run already finished", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let id = parse_id("workflow run", &id)?;
    state.workflows.cancel_run(id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(run_view(&state.workflows, id).await?),
    ))
}

/// What `POST /v1/workflow-runs/{id}/retry` may be sent (the body is optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryRun {
    /// A new input (JSON) for nodes run again from their start, by node name: each runs on it
    /// instead of the input its upstreams (or the run) give it.
    #[serde(default)]
    #[schema(value_type = Object)]
    inputs: std::collections::BTreeMap<String, Value>,
}

/// Retry a failed or cancelled run from where it failed: nodes that succeeded keep their jobs
/// and outputs; failed and cancelled nodes, and the nodes skipped because of them, are planned
/// again, and of a `for_each` node only the elements that did not succeed run again. A node
/// run again from its start may be given a new input (`inputs`). The run's events record the
/// retry; its timeout counts again from now.
#[utoipa::path(
    post,
    path = "/workflow-runs/{id}/retry",
    operation_id = "retryRun",
    tag = "workflow-runs",
    params(("id" = i64, Path, minimum = 1, description = "The run id")),
    request_body(content = Option<RetryRun>, description = "Optional: new inputs for nodes run again", example = json!({"inputs": {"charge": {"amount": 10, "currency": "EUR"}}})),
    responses(
        (status = 202, description = "Retried; the run as it stands", body = RunView),
        (status = 400, description = "Bad run id", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run is not failed or cancelled, or a node given an input is not run again from its start", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the size limit", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "A body that is not JSON", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The workflow's nodes ask for more than the admission policy now allows, or an input names no node of the workflow", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let id = parse_id("workflow run", &id)?;
    let body = body.map_err(super::error::body_rejection)?;
    let req: RetryRun = if body.is_empty() {
        RetryRun::default()
    } else {
        super::error::parse_json_body(&headers, body).await?
    };
    state.workflows.retry_run(id, &req.inputs).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(run_view(&state.workflows, id).await?),
    ))
}

/// Follow a run live (Server-Sent Events): `run` and `node` events (state changes, with the
/// run event's sequence number as the event id), the `log` and `progress` events of its nodes'
/// jobs (with `node`, `job` and, for a `for_each` element, `index`), then `end`.
#[utoipa::path(
    get,
    path = "/workflow-runs/{id}/events",
    operation_id = "followRun",
    tag = "workflow-runs",
    params(
        ("id" = i64, Path, minimum = 1, description = "The run id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume the run events after this id"),
    ),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = crate::http::openapi::SseEventDoc),
        (status = 400, description = "Bad run id or Last-Event-ID", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let id = parse_id("workflow run", &id)?;
    let after = super::events::last_event_id(&headers)?;
    // Listen before the first read: a change between the two is not lost.
    let notices = state.service.store.subscribe();
    if state.workflows.runs().get_run(id).await?.is_none() {
        return Err(ApiError::not_found(format!("workflow run {id} not found")));
    }
    let (tx, rx) = mpsc::channel(256);
    let _ = tx.try_send(Ok(super::events::reconnect_hint()));
    tokio::spawn(async move {
        if let Err(e) = pump(&state, id, after, notices, &tx).await {
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

/// How long a follower of a run waits after a change before reading, so that changes arriving
/// together are read together.
const FOLLOW_COALESCE: Duration = Duration::from_millis(100);

/// Where a node job's log stream stands.
struct JobCursor {
    node: String,
    index: Option<i64>,
    after: i64,
    /// The job had ended when its events were last read: nothing more will come.
    drained: bool,
}

async fn pump(
    state: &AppState,
    id: RunId,
    mut after: i64,
    mut notices: broadcast::Receiver<Notice>,
    tx: &mpsc::Sender<Result<SseEvent, Infallible>>,
) -> Result<(), ApiError> {
    let (store, runs) = (&state.service.store, state.workflows.runs());
    let mut jobs: HashMap<JobId, JobCursor> = HashMap::new();
    loop {
        // The run as it stands before reading events: if it is final here, every event of it
        // is already written.
        let snap = runs
            .get_run(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("workflow run {id} not found")))?;
        let run_events = runs.run_events(id, after, 500).await?;
        for e in &run_events {
            after = e.seq;
            let mut data = e.data.clone();
            data["at"] = json!(e.at);
            let event = SseEvent::default()
                .id(e.seq.to_string())
                .event(e.kind.as_str())
                .data(data.to_string());
            if tx.send(Ok(event)).await.is_err() {
                return Ok(());
            }
        }
        // The jobs of the run's nodes and running elements: their logs and progress.
        for n in &snap.nodes {
            if let Some(job) = n.job_id {
                jobs.entry(job).or_insert_with(|| JobCursor {
                    node: n.name.clone(),
                    index: None,
                    after: 0,
                    drained: false,
                });
            }
        }
        for item in &snap.running_items {
            jobs.entry(item.job_id).or_insert_with(|| JobCursor {
                node: item.node.clone(),
                index: Some(item.idx),
                after: 0,
                drained: false,
            });
        }
        let running: HashSet<JobId> = snap.outstanding_jobs().into_iter().collect();
        for (&job, cursor) in jobs.iter_mut().filter(|(_, c)| !c.drained) {
            loop {
                let events = store.events(job, cursor.after, 500).await?;
                for e in &events {
                    cursor.after = e.seq;
                    if e.kind != "log" && e.kind != "progress" {
                        continue;
                    }
                    let mut data = e.data.clone();
                    data["node"] = json!(cursor.node);
                    data["job"] = json!(job);
                    if let Some(i) = cursor.index {
                        data["index"] = json!(i);
                    }
                    data["at"] = json!(e.at);
                    let event = SseEvent::default()
                        .event(e.kind.as_str())
                        .data(data.to_string());
                    if tx.send(Ok(event)).await.is_err() {
                        return Ok(());
                    }
                }
                if events.len() < 500 {
                    break;
                }
            }
            cursor.drained = !running.contains(&job);
        }
        if snap.run.state.is_final() && run_events.len() < 500 {
            let end = json!({ "state": snap.run.state, "error": snap.run.error });
            let _ = tx
                .send(Ok(SseEvent::default().event("end").data(end.to_string())))
                .await;
            return Ok(());
        }
        if run_events.len() == 500 {
            continue;
        }
        // Wait for a change of the run or of one of its jobs (or poll, should a notice be lost).
        let wait = async {
            loop {
                match notices.recv().await {
                    Ok(Notice::Run(r)) if r == id => return,
                    Ok(Notice::Events(j)) if jobs.contains_key(&j) => return,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
        if tx.is_closed() {
            return Ok(());
        }
        // Whatever else changes in the next moment is read in the same round: a run whose
        // elements end by the thousand costs each follower a few rounds a second, not a round
        // per change.
        tokio::time::sleep(FOLLOW_COALESCE).await;
    }
}
