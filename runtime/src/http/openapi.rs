//! The OpenAPI 3.1 document, served at `/openapi.json`. Paths, parameters and request bodies
//! come from the `#[utoipa::path]` attribute on each handler, and the router registers handlers
//! through `utoipa_axum::routes!`, so a route cannot be served without being documented.
//!
//! Most bodies are typed structs beside their handlers, which build and serialize them; they
//! are re-exported here for the handlers' `responses(...)`. The structs defined below describe,
//! for the document only, the bodies still built as JSON values: a job (`JobView`, with its
//! attempts, and the batch answers that carry it), workflow runs, SSE events.
//! `tests/tests/all/api/service.rs` checks that the document lists every route, and CI fuzzes
//! a live server from it (schemathesis) to check responses match.

#![allow(dead_code)] // the structs defined below are only read by the OpenAPI derive

use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

pub(crate) use super::error::{ErrorBody, ErrorDetail};
pub(crate) use super::jobs::{JobList, StateReply};
pub(crate) use super::modules::{ModuleList, ModuleView};
pub(crate) use super::schedules::{ScheduleList, ScheduleRequest, ScheduleView};
pub(crate) use super::workflows::{WorkflowList, WorkflowView};
pub(crate) use super::{Health, Readiness};
use crate::schema::{JobStateDoc, OutcomeDoc};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wasmjobs",
        description = "WebAssembly-sandboxed jobs: upload components, submit jobs, follow them live.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "modules", description = "Job components, content-addressed by sha256"),
        (name = "jobs", description = "Submit, inspect, follow, cancel and retry jobs"),
        (name = "schedules", description = "Cron schedules that submit jobs"),
        (name = "workflows", description = "Workflow definitions, versioned by name"),
        (name = "workflow-runs", description = "Runs of workflows: start, follow, cancel"),
        (name = "service", description = "Health, metrics and this document"),
    )
)]
pub(crate) struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from the server's config; none is needed when the server has no tokens (loopback only).",
                    ))
                    .build(),
            ),
        );
    }
}

/// Raw bytes (a wasm component).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub(crate) struct WasmBytes(Vec<u8>);

/// One Server-Sent Event of a job's stream. `event` is `state`, `log`, `progress`, `output`,
/// `end` or `error`; `data` is a JSON object; `id` (the job's event sequence number, for
/// `Last-Event-ID`) is on every event but `output` and `end`.
#[derive(ToSchema)]
pub(crate) struct SseEventDoc {
    id: Option<String>,
    event: String,
    data: String,
}

/// One attempt of a job.
#[derive(ToSchema)]
pub(crate) struct AttemptView {
    attempt: u32,
    worker: String,
    outcome: Option<OutcomeDoc>,
    /// Which trap, when the outcome is `trapped`.
    trap: Option<String>,
    error: Option<String>,
    fuel_consumed: Option<u64>,
    peak_memory_bytes: Option<u64>,
    wall_time_us: Option<u64>,
    started_at: i64,
    finished_at: Option<i64>,
}

/// A job. Its output is `output` (when it is JSON), `output_text` (UTF-8) or `output_base64`.
#[derive(ToSchema)]
pub(crate) struct JobView {
    id: i64,
    /// The module digest the job is pinned to.
    module: String,
    state: JobStateDoc,
    priority: i64,
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
    outcome: Option<OutcomeDoc>,
    error: Option<String>,
    workflow_ref: Option<String>,
    /// The job whose output is this job's input (a workflow node with one upstream).
    input_from: Option<i64>,
    created_at: i64,
    updated_at: i64,
    finished_at: Option<i64>,
    output: Option<Value>,
    output_text: Option<String>,
    output_base64: Option<String>,
    /// With `?include=input`.
    input_base64: Option<String>,
}

/// The answers of `POST /v1/jobs/batch`, one per submission, in the request's order.
#[derive(ToSchema)]
pub(crate) struct BatchView {
    jobs: Vec<BatchAnswer>,
}

/// One submission's answer: the status `POST /v1/jobs` would have given it, and the job
/// (`201`, `200`) or the error (`4xx`, `5xx`).
#[derive(ToSchema)]
pub(crate) struct BatchAnswer {
    status: u16,
    job: Option<JobView>,
    error: Option<ErrorDetail>,
}

/// A workflow run: its state, each node's, and its output once it succeeded.
#[derive(ToSchema)]
pub(crate) struct RunView {
    id: i64,
    workflow: String,
    version: i64,
    state: crate::store::RunState,
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
    output: Option<Value>,
}

/// One node of a run.
#[derive(ToSchema)]
pub(crate) struct RunNodeView {
    name: String,
    /// The module digest the run pinned.
    module: String,
    state: crate::store::NodeState,
    needs: Vec<String>,
    /// The node's job (plain nodes, once started).
    job: Option<i64>,
    error: Option<String>,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    /// `for_each` nodes only.
    items: Option<RunItemsView>,
}

/// The elements of a `for_each` node.
#[derive(ToSchema)]
pub(crate) struct RunItemsView {
    total: i64,
    submitted: i64,
    done: i64,
    failed: i64,
    elements: Vec<RunElementView>,
}

#[derive(ToSchema)]
pub(crate) struct RunElementView {
    index: i64,
    state: crate::store::NodeState,
    job: Option<i64>,
}
