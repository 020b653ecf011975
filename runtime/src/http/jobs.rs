//! `POST /v1/jobs`, `POST /v1/jobs/batch`, `GET /v1/jobs`, `GET /v1/jobs/{id}`,
//! `POST /v1/jobs/{id}/cancel|retry`.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use utoipa::ToSchema;
use wasmjobs_host::Outcome;

use super::{ApiError, AppState};
use crate::caller::Caller;
use crate::schema::{JobStateDoc, OutcomeDoc};
use crate::service::SubmitJob;
use crate::store::{Attempt, Job, JobFilter, JobState, now_ms};

/// How long `?wait=` may hold a request.
const MAX_WAIT: Duration = Duration::from_secs(300);

#[derive(Deserialize)]
pub(super) struct SubmitQuery {
    wait: Option<String>,
}

/// An id from a path: a positive integer, or a 400 naming `what` (`job`, `workflow run`).
pub(super) fn parse_id(what: &str, id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid {what} id {id:?}: expected a positive integer"
        ))
    })
}

/// The job as the API shows it: state, attempts, output (JSON when it parses as JSON, else
/// text, else base64), timestamps. Environment grant values are shown to admins only, and the
/// idempotency key as its client sent it.
pub(super) async fn job_json(
    state: &AppState,
    job: &Job,
    caller: &Caller,
) -> Result<JobView, ApiError> {
    let attempts = if job.attempts == 0 {
        // Not claimed yet (a job just accepted): no attempt rows to read.
        Vec::new()
    } else {
        state.service.store.attempts(job.id).await?
    };
    fn value<T: Serialize>(v: &T) -> Result<Value, ApiError> {
        serde_json::to_value(v).map_err(ApiError::internal)
    }
    let mut grants = value(&job.grants)?;
    super::redact_grants(&mut grants, caller);
    let (output, output_text, output_base64) = match output_view(job.output.as_deref()) {
        None => (None, None, None),
        Some(OutputView::Json(raw)) => (Some(raw), None, None),
        Some(OutputView::Text(text)) => (None, Some(text), None),
        Some(OutputView::Base64(b64)) => (None, None, Some(b64)),
    };
    Ok(JobView {
        id: job.id,
        module: job.module.clone(),
        state: job.state,
        queue: job.queue.clone(),
        priority: job.priority,
        concurrency_key: job.concurrency.as_ref().map(|c| c.key.clone()),
        concurrency_limit: job.concurrency.as_ref().map(|c| c.limit),
        waiting_for_key: job.waiting_for_key,
        run_at: job.run_at,
        limits: value(&job.limits)?,
        retry: value(&job.retry)?,
        grants,
        idempotency_key: job
            .idempotency_key
            .as_deref()
            .map(|k| crate::service::client_key(k).to_string()),
        attempts: attempts.into_iter().map(AttemptView::from).collect(),
        attempt_count: job.attempts,
        lost_attempts: job.lost_attempts,
        deadline_at: job.deadline_at,
        worker: job.worker.clone(),
        lease_until: job.lease_until,
        cancel_requested: job.cancel_requested,
        outcome: job.outcome,
        error: job.error.clone(),
        workflow_ref: job.workflow_ref.clone(),
        input_from: job.input_from,
        created_at: job.created_at,
        updated_at: job.updated_at,
        finished_at: job.finished_at,
        output,
        output_text,
        output_base64,
        input_base64: None,
    })
}

/// A job. Its output is `output` (when it is JSON), `output_text` (UTF-8) or `output_base64`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JobView {
    id: i64,
    /// The module digest the job is pinned to.
    module: String,
    #[schema(value_type = JobStateDoc)]
    state: JobState,
    /// The queue it waits in.
    queue: String,
    priority: i64,
    /// Its concurrency key: at most `concurrency_limit` jobs with it run at once.
    concurrency_key: Option<String>,
    concurrency_limit: Option<u32>,
    /// Queued or scheduled, and waiting for a place of its concurrency key (it takes one
    /// when a job of the key ends).
    waiting_for_key: bool,
    run_at: i64,
    limits: Value,
    retry: Value,
    grants: Value,
    idempotency_key: Option<String>,
    attempts: Vec<AttemptView>,
    attempt_count: u32,
    /// Of `attempt_count`, the attempts that ended `lost`.
    lost_attempts: u32,
    deadline_at: Option<i64>,
    worker: Option<String>,
    lease_until: Option<i64>,
    cancel_requested: bool,
    #[schema(value_type = Option<OutcomeDoc>)]
    outcome: Option<Outcome>,
    error: Option<String>,
    workflow_ref: Option<String>,
    /// The job whose output is this job's input (a workflow node with one upstream).
    input_from: Option<i64>,
    created_at: i64,
    updated_at: i64,
    finished_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    output: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_base64: Option<String>,
    /// With `?include=input`.
    #[serde(skip_serializing_if = "Option::is_none")]
    input_base64: Option<String>,
}

/// One attempt of a job.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AttemptView {
    attempt: u32,
    worker: String,
    #[schema(value_type = Option<OutcomeDoc>)]
    outcome: Option<Outcome>,
    /// Which trap, when the outcome is `trapped`.
    trap: Option<String>,
    error: Option<String>,
    fuel_consumed: Option<u64>,
    peak_memory_bytes: Option<u64>,
    wall_time_us: Option<u64>,
    started_at: i64,
    finished_at: Option<i64>,
}

impl From<Attempt> for AttemptView {
    fn from(a: Attempt) -> AttemptView {
        AttemptView {
            attempt: a.attempt,
            worker: a.worker,
            outcome: a.outcome,
            trap: a.trap,
            error: a.error,
            fuel_consumed: a.fuel_consumed,
            peak_memory_bytes: a.peak_memory_bytes,
            wall_time_us: a.wall_time_us,
            started_at: a.started_at,
            finished_at: a.finished_at,
        }
    }
}

/// The answers of `POST /v1/jobs/batch`, one per submission, in the request's order.
#[derive(Serialize, ToSchema)]
pub(crate) struct BatchView {
    jobs: Vec<BatchAnswer>,
}

/// One submission's answer: the status `POST /v1/jobs` would have given it, and the job
/// (`201`, `200`) or the error (`4xx`, `5xx`).
#[derive(Serialize, ToSchema)]
pub(crate) struct BatchAnswer {
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<JobView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<super::error::Problem>,
}

/// A job's output as the API shows it: `{"output": …}` when it is JSON — passed through as
/// it is stored, never parsed into a tree, so a large output costs its own size and not
/// thirty times that — else `{"output_text": …}` when UTF-8, else `{"output_base64": …}`;
/// nothing without output.
#[derive(Debug, serde::Serialize)]
pub(super) enum OutputView {
    #[serde(rename = "output")]
    Json(Box<RawValue>),
    #[serde(rename = "output_text")]
    Text(String),
    #[serde(rename = "output_base64")]
    Base64(String),
}

pub(super) fn output_view(output: Option<&[u8]>) -> Option<OutputView> {
    let out = output?;
    Some(match serde_json::from_slice::<&RawValue>(out) {
        Ok(raw) => OutputView::Json(raw.to_owned()),
        Err(_) => match std::str::from_utf8(out) {
            Ok(text) => OutputView::Text(text.to_string()),
            Err(_) => OutputView::Base64(base64::engine::general_purpose::STANDARD.encode(out)),
        },
    })
}

/// A job in a list.
#[derive(Serialize, ToSchema)]
pub(crate) struct JobSummary {
    id: i64,
    module: String,
    #[schema(value_type = JobStateDoc)]
    state: JobState,
    queue: String,
    priority: i64,
    attempt_count: u32,
    #[schema(value_type = Option<OutcomeDoc>)]
    outcome: Option<Outcome>,
    created_at: i64,
    finished_at: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct JobList {
    jobs: Vec<JobSummary>,
    /// Pass as `cursor` for the next page; null on the last one.
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct StateReply {
    id: i64,
    #[schema(value_type = JobStateDoc)]
    state: JobState,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'static str>,
}

/// Submit a job. A repeated idempotency key (the `Idempotency-Key` header or the
/// `idempotency_key` field) answers 200 with the first job when the request is the same, and
/// 422 when it differs.
#[utoipa::path(
    post,
    path = "/jobs",
    operation_id = "submitJob",
    tag = "jobs",
    params(
        ("wait" = Option<String>, Query, description = "Hold the request until the job ends or this long passes, e.g. `5s` (at most 5m)"),
        ("Idempotency-Key" = Option<String>, Header, description = "The submission's idempotency key, as the `idempotency_key` field (the two must agree when both are sent)"),
    ),
    request_body(
        content = crate::service::SubmitJob,
        description = "The submission",
        example = json!({"module": "wordfreq", "input": {"text": "the cat and the hat"}, "limits": {"fuel": 1_000_000_000_u64, "timeout_ms": "5s"}, "retry": {"max_attempts": 3}, "idempotency_key": "order-1234"})
    ),
    responses(
        (status = 201, description = "Accepted; `Location` names the job", body = crate::http::openapi::JobView),
        (status = 200, description = "The job first submitted with this idempotency key", body = crate::http::openapi::JobView),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the size limit", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown module, a field of the wrong type, over a cap of the admission policy, or an idempotency key used before for a different request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn submit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<SubmitQuery>,
    request_headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, HeaderMap, Json<JobView>), ApiError> {
    let body = body.map_err(super::error::body_rejection)?;
    let wait = q
        .wait
        .as_deref()
        .map(|w| {
            wasmjobs_host::units::parse_duration(w)
                .map_err(|e| ApiError::bad_request(format!("wait: {e}")))
        })
        .transpose()?
        .map(|w| w.min(MAX_WAIT));
    let mut req: SubmitJob = super::error::parse_json_body(&request_headers, body).await?;
    if let Some(header) = request_headers.get("idempotency-key") {
        let key = header.to_str().map_err(|_| {
            ApiError::bad_request("the Idempotency-Key header must be visible ASCII")
        })?;
        match &req.idempotency_key {
            Some(field) if field != key => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    format!(
                        "the Idempotency-Key header ({key:?}) and the idempotency_key field ({field:?}) differ: send one, or the same in both"
                    ),
                ));
            }
            _ => req.idempotency_key = Some(key.to_string()),
        }
    }
    let (mut job, created) = state.service.submit(req, &caller).await?;
    if let Some(wait) = wait
        && !job.state.is_final()
    {
        // Follow first, then read: a change between the two is not lost.
        let mut watch = state.service.watchers.watch(job.id);
        let until = tokio::time::Instant::now() + wait;
        loop {
            job = state
                .service
                .store
                .get_job(job.id)
                .await?
                .ok_or_else(|| ApiError::not_found("job vanished"))?;
            if job.state.is_final()
                || tokio::time::timeout_at(until, watch.changed())
                    .await
                    .is_err()
            {
                break;
            }
        }
    }
    let mut headers = HeaderMap::new();
    if let Ok(loc) = format!("/v1/jobs/{}", job.id).parse() {
        headers.insert(header::LOCATION, loc);
    }
    Ok((
        submitted_status(created),
        headers,
        Json(job_json(&state, &job, &caller).await?),
    ))
}

/// A submission's answer: `201` for a new job, `200` for the job first submitted with the
/// same idempotency key.
fn submitted_status(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// Most submissions in one `POST /v1/jobs/batch`.
pub const MAX_BATCH: usize = 1000;

/// `POST /v1/jobs/batch`: `{"jobs": [submission, …]}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SubmitBatch {
    /// 1 to 1,000 submissions, each as `POST /v1/jobs` takes it.
    jobs: Vec<SubmitJob>,
}

/// Submit many jobs in one request. Each submission is validated and answered on its own, in
/// the request's order, with the status `POST /v1/jobs` would give it (`201` created, `200` an
/// earlier job with the same idempotency key, `4xx` with an error); a refused submission does
/// not stop the others. Every job answered `201`/`200` is stored durably when the response is
/// sent. The batch is not one transaction: its accepted jobs go to one group commit together,
/// but a job the store refuses alone is that job's error and the others are still stored.
#[utoipa::path(
    post,
    path = "/jobs/batch",
    operation_id = "submitJobs",
    tag = "jobs",
    request_body(
        content = SubmitBatch,
        description = "1 to 1,000 submissions",
        example = json!({"jobs": [{"module": "wordfreq", "input": {"text": "a b"}}, {"module": "wordfreq", "input": {"text": "c"}}]})
    ),
    responses(
        (status = 200, description = "One answer per submission, in order", body = crate::http::openapi::BatchView),
        (status = 400, description = "Malformed JSON, or no submissions, or more than 1,000", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the size limit", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field of the wrong type (the whole batch is refused; nothing is stored)", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn submit_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<BatchView>, ApiError> {
    let body = body.map_err(super::error::body_rejection)?;
    super::error::require_json(&headers)?;
    if body.trim_ascii_start().starts_with(b"[") {
        // A bare array is the likeliest mistake; serde would call it a malformed struct.
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "invalid request body: expected an object {\"jobs\": [submission, …]}, not an array",
        ));
    }
    let batch: SubmitBatch = super::error::parse_json_off_thread(body).await?;
    if batch.jobs.is_empty() || batch.jobs.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "jobs holds {} submissions: a batch takes 1 to {MAX_BATCH}",
            batch.jobs.len()
        )));
    }
    let mut answers = Vec::with_capacity(batch.jobs.len());
    for result in state.service.submit_many(batch.jobs, &caller).await {
        answers.push(match result {
            Ok((job, created)) => BatchAnswer {
                status: submitted_status(created).as_u16(),
                job: Some(job_json(&state, &job, &caller).await?),
                error: None,
            },
            Err(e) => {
                let e = ApiError::from(e);
                if e.status.is_server_error() {
                    tracing::error!("batch submission: {} {}: {}", e.status, e.code, e.message);
                }
                BatchAnswer {
                    status: e.status.as_u16(),
                    job: None,
                    error: Some(e.into()),
                }
            }
        });
    }
    Ok(Json(BatchView { jobs: answers }))
}

#[derive(Deserialize)]
pub(super) struct GetQuery {
    include: Option<String>,
}

/// One job: state, attempts, output, timestamps.
#[utoipa::path(
    get,
    path = "/jobs/{id}",
    operation_id = "getJob",
    tag = "jobs",
    params(
        ("id" = i64, Path, minimum = 1, description = "The job id"),
        ("include" = Option<String>, Query, description = "`input` adds `input_base64`"),
    ),
    responses(
        (status = 200, description = "The job", body = crate::http::openapi::JobView),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<GetQuery>,
) -> Result<Json<JobView>, ApiError> {
    let id = parse_id("job", &id)?;
    let job = state
        .service
        .store
        .get_job(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id} not found")))?;
    let mut v = job_json(&state, &job, &caller).await?;
    match q.include.as_deref() {
        None => {}
        Some("input") => {
            // A job whose input is another job's output: that output, as the job reads it.
            let input = match job.input_from {
                Some(from) => state
                    .service
                    .store
                    .job_output(from)
                    .await?
                    .unwrap_or_default(),
                None => job.input.clone(),
            };
            v.input_base64 = Some(base64::engine::general_purpose::STANDARD.encode(&input))
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid include {other:?}: expected input"
            )));
        }
    }
    Ok(Json(v))
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    state: Option<String>,
    module: Option<String>,
    queue: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// Jobs, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/jobs",
    operation_id = "listJobs",
    tag = "jobs",
    params(
        ("state" = Option<JobStateDoc>, Query, description = "Only jobs in this state"),
        ("module" = Option<String>, Query, description = "Only jobs of this module (name or digest)"),
        ("queue" = Option<String>, Query, pattern = r"^[A-Za-z0-9_.-]{1,64}$", description = "Only jobs in this queue"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1 to 1000 (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of jobs", body = crate::http::openapi::JobList),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<JobList>, ApiError> {
    let job_state = q
        .state
        .as_deref()
        .map(str::parse::<JobState>)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let limit = super::page_limit(q.limit.as_deref())?;
    let cursor = super::page_cursor(q.cursor.as_deref())?;
    let module_digest = match &q.module {
        None => None,
        Some(m) => Some(
            state
                .service
                .store
                .get_module(m)
                .await?
                .ok_or_else(|| ApiError::bad_request(format!("unknown module {m:?}")))?
                .digest,
        ),
    };
    if let Some(queue) = &q.queue {
        crate::store::queues::check_queue_name(queue).map_err(ApiError::bad_request)?;
    }
    let jobs = state
        .service
        .store
        .list_jobs(&JobFilter {
            state: job_state,
            module_digest,
            queue: q.queue,
            limit,
            cursor,
        })
        .await?;
    let next_cursor = (jobs.len() == limit as usize)
        .then(|| jobs.last().map(|j| j.id.to_string()))
        .flatten();
    let jobs = jobs
        .into_iter()
        .map(|j| JobSummary {
            id: j.id,
            module: j.module,
            queue: j.queue,
            state: j.state,
            priority: j.priority,
            attempt_count: j.attempts,
            outcome: j.outcome,
            created_at: j.created_at,
            finished_at: j.finished_at,
        })
        .collect();
    Ok(Json(JobList { jobs, next_cursor }))
}

/// Cancel a job: a queued or scheduled one at once, a running one within a second.
#[utoipa::path(
    post,
    path = "/jobs/{id}/cancel",
    operation_id = "cancelJob",
    tag = "jobs",
    params(("id" = i64, Path, minimum = 1, description = "The job id")),
    responses(
        (status = 200, description = "Cancelled, or cancel requested", body = crate::http::openapi::StateReply),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job already ended", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StateReply>, ApiError> {
    let id = parse_id("job", &id)?;
    let st = state.service.store.cancel(id, now_ms()).await?;
    let note = if st == JobState::Running {
        "cancel requested: the running attempt stops within a second"
    } else {
        "cancelled"
    };
    Ok(Json(StateReply {
        id,
        state: st,
        message: Some(note),
    }))
}

/// Put a failed or cancelled job back in the queue.
#[utoipa::path(
    post,
    path = "/jobs/{id}/retry",
    operation_id = "retryJob",
    tag = "jobs",
    params(("id" = i64, Path, minimum = 1, description = "The job id")),
    responses(
        (status = 200, description = "Queued again", body = crate::http::openapi::StateReply),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is not failed or cancelled", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StateReply>, ApiError> {
    let id = parse_id("job", &id)?;
    let st = state.service.store.retry(id, now_ms()).await?;
    Ok(Json(StateReply {
        id,
        state: st,
        message: None,
    }))
}
