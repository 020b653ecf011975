//! `POST /v1/schedules` `{cron, job | workflow, name?, tz?, overlap?}`, `GET /v1/schedules`,
//! `DELETE /v1/schedules/{id-or-name}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{ApiError, AppState};
use crate::caller::Caller;
use crate::scheduler::{Target, WorkflowTarget, next_after};
use crate::service::SubmitJob;
use crate::store::{NewSchedule, Overlap, Schedule, now_ms};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScheduleRequest {
    /// A cron expression (5 fields, or 6 with seconds).
    cron: String,
    /// The IANA time zone the expression is read in (`Europe/Berlin`), daylight saving
    /// included; UTC if none.
    tz: Option<String>,
    /// What a tick does while the job or run of the previous one has not ended: `allow` (the
    /// default), `skip`, or `queue_one`.
    #[serde(default)]
    overlap: Overlap,
    /// The job each tick submits, as for `POST /v1/jobs`. Give this or `workflow`.
    job: Option<SubmitJob>,
    /// The workflow run each tick starts. Give this or `job`.
    workflow: Option<WorkflowTarget>,
    name: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ScheduleView {
    id: i64,
    name: Option<String>,
    cron: String,
    /// The IANA time zone of `cron`; null for UTC.
    tz: Option<String>,
    overlap: Overlap,
    /// The job of its last submission (a schedule of a job).
    last_job: Option<i64>,
    /// The run it last started (a schedule of a workflow).
    last_run: Option<i64>,
    /// A tick kept until `last_job` or `last_run` ends (`queue_one`).
    pending_tick: Option<i64>,
    /// What each tick does: the job it submits (as `POST /v1/jobs` takes it), or
    /// `{"workflow": {name, version?, input?}}`, the run it starts.
    target: Value,
    next_run_at: i64,
    /// Its next fire times (ms since the epoch), up to five, from `next_run_at`.
    next_runs: Vec<i64>,
    created_at: i64,
}

impl From<Schedule> for ScheduleView {
    fn from(s: Schedule) -> ScheduleView {
        let mut next_runs = vec![s.next_run_at];
        next_runs.extend(crate::scheduler::next_ticks(&s, s.next_run_at, 4));
        ScheduleView {
            id: s.id,
            name: s.name,
            tz: s.tz,
            overlap: s.overlap,
            last_job: s.last_job,
            last_run: s.last_run,
            pending_tick: s.pending_tick,
            cron: s.cron,
            target: s.target,
            next_run_at: s.next_run_at,
            next_runs,
            created_at: s.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ScheduleList {
    schedules: Vec<ScheduleView>,
}

/// Add a cron schedule that submits a job, or starts a workflow run, each tick.
#[utoipa::path(
    post,
    path = "/schedules",
    operation_id = "addSchedule",
    tag = "schedules",
    request_body(
        content = crate::http::openapi::ScheduleRequest,
        description = "The schedule",
        example = json!({"cron": "*/5 * * * *", "tz": "Europe/Berlin", "name": "every-five", "job": {"module": "wordfreq", "input": {"text": "tick"}}})
    ),
    responses(
        (status = 201, description = "Added", body = crate::http::openapi::ScheduleView),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the size limit", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad cron expression, an unknown module or workflow, a bad job, or neither or both of job and workflow", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn add(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    let body = body.map_err(super::error::body_rejection)?;
    super::error::require_json(&headers)?;
    let req: ScheduleRequest = super::error::parse_json(&body)?;
    crate::service::storable("cron", &req.cron)?;
    if let Some(name) = &req.name {
        crate::service::storable("name", name)?;
    }
    let invalid = |m: &str| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", m);
    let target = match (req.job, req.workflow) {
        (Some(job), None) => {
            if job.idempotency_key.is_some() {
                return Err(invalid(
                    "job.idempotency_key: a schedule gives each tick's job a key of its own; leave it out",
                ));
            }
            // What each tick will submit is checked now, as a submission would be (and again
            // at each tick, against the policy in force then).
            state.service.check(&job)?;
            if state.service.store.get_module(&job.module).await?.is_none() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unknown_module",
                    format!("unknown module {:?}", job.module),
                ));
            }
            Target::Job(Box::new(job))
        }
        (None, Some(workflow)) => {
            if workflow.version.is_some_and(|v| v < 1) {
                return Err(invalid("workflow.version must be a positive integer"));
            }
            // The workflow must exist now (each tick starts its latest version, or the one
            // pinned), and its input must be one a run takes.
            let input = crate::service::input_bytes(workflow.input.as_ref(), None)?;
            state
                .workflows
                .check_input(&input)
                .map_err(crate::service::ServiceError::from)?;
            if let Err(e) = state
                .workflows
                .definition(&workflow.name, workflow.version)
                .await
            {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unknown_workflow",
                    format!("workflow: {e}"),
                ));
            }
            Target::Workflow(workflow)
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                "give job or workflow, not both: a schedule submits a job or starts a run",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "job or workflow is required: what each tick submits or starts",
            ));
        }
    };
    crate::scheduler::cron_parse(&req.cron)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", m))?;
    if let Some(tz) = &req.tz {
        crate::scheduler::parse_tz(tz)
            .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", m))?;
    }
    let now = now_ms();
    let next = next_after(&req.cron, req.tz.as_deref(), now).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("cron expression {:?} never fires", req.cron),
        )
    })?;
    let target = target
        .to_stored()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let s = state
        .service
        .store
        .add_schedule(
            NewSchedule {
                name: req.name,
                cron: req.cron,
                tz: req.tz,
                overlap: req.overlap,
                target,
                next_run_at: next,
            },
            now,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(s.into())))
}

/// Every schedule.
#[utoipa::path(
    get,
    path = "/schedules",
    operation_id = "listSchedules",
    tag = "schedules",
    responses(
        (status = 200, description = "The schedules", body = crate::http::openapi::ScheduleList),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ScheduleList>, ApiError> {
    let mut schedules: Vec<ScheduleView> = state
        .service
        .store
        .list_schedules()
        .await?
        .into_iter()
        .map(ScheduleView::from)
        .collect();
    for s in &mut schedules {
        super::redact_grants(&mut s.target["grants"], &caller);
    }
    Ok(Json(ScheduleList { schedules }))
}

/// Delete a schedule by id or name.
#[utoipa::path(
    delete,
    path = "/schedules/{key}",
    operation_id = "deleteSchedule",
    tag = "schedules",
    params(("key" = String, Path, description = "The schedule's id or name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
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
