//! The OpenAPI 3.1 document, served at `/openapi.json`. Paths, parameters and request bodies
//! come from the `#[utoipa::path]` attribute on each handler, and the router registers handlers
//! through `utoipa_axum::routes!`, so a route cannot be served without being documented.
//!
//! Most bodies are typed structs beside their handlers, which build and serialize them; they
//! are re-exported here for the handlers' `responses(...)`. The structs defined below describe,
//! for the document only, the bodies still built as JSON values: workflow runs and SSE events.
//! `tests/tests/all/api/service.rs` checks that the document lists every route, and CI fuzzes
//! a live server from it (schemathesis) to check responses match.

#![allow(dead_code)] // the structs defined below are only read by the OpenAPI derive

use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

pub(crate) use super::error::ErrorBody;
pub(crate) use super::jobs::{BatchView, JobList, JobView, StateReply};
pub(crate) use super::modules::{ModuleList, ModuleView};
pub(crate) use super::schedules::{ScheduleList, ScheduleRequest, ScheduleView};
pub(crate) use super::workflows::{WorkflowList, WorkflowView};
pub(crate) use super::{Health, Readiness};

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
