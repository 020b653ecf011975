//! The OpenAPI 3.1 document, served at `/openapi.json`. Paths, parameters and request bodies
//! come from the `#[utoipa::path]` attribute on each handler, and the router registers handlers
//! through `utoipa_axum::routes!`, so a route cannot be served without being documented.
//!
//! Bodies are typed structs beside their handlers, which build and serialize them; they are
//! re-exported here for the handlers' `responses(...)`. The two bodies no Rust type stands for
//! (a wasm component's bytes, an SSE event) have their schemas written out below.
//! `tests/tests/all/api/service.rs` checks that the document lists every route, and CI fuzzes
//! a live server from it (schemathesis) to check responses match.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

pub(crate) use super::error::Problem;
pub(crate) use super::jobs::{BatchView, JobList, JobView, StateReply};
pub(crate) use super::modules::{ModuleList, ModuleView};
pub(crate) use super::queues::{QueueList, QueueView};
pub(crate) use super::schedules::{ScheduleList, ScheduleRequest, ScheduleView};
pub(crate) use super::webhooks::{DeliveryList, DeliveryView, WebhookList, WebhookView};
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
    servers((url = "/", description = "The server that serves this document")),
    security(("bearer" = [])),
    tags(
        (name = "modules", description = "Job components, content-addressed by sha256"),
        (name = "jobs", description = "Submit, inspect, follow, cancel and retry jobs"),
        (name = "queues", description = "Named queues: depth, limits, pause and resume"),
        (name = "schedules", description = "Cron schedules that submit jobs"),
        (name = "workflows", description = "Workflow definitions, versioned by name"),
        (name = "workflow-runs", description = "Runs of workflows: start, follow, cancel"),
        (name = "webhooks", description = "Webhooks: job and run events sent to your URLs, signed, retried; their deliveries"),
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

/// Raw bytes (a wasm component): a binary body, described by hand because no Rust type
/// stands for it.
pub(crate) struct WasmBytes;

impl ToSchema for WasmBytes {}

impl PartialSchema for WasmBytes {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .description(Some("Raw bytes (a wasm component)."))
            .into()
    }
}

/// One Server-Sent Event of a stream, described by hand: the stream is written as
/// `text/event-stream` lines, not serialized from a type.
pub(crate) struct SseEventDoc;

impl ToSchema for SseEventDoc {}

impl PartialSchema for SseEventDoc {
    fn schema() -> RefOr<Schema> {
        let string = || ObjectBuilder::new().schema_type(Type::String);
        ObjectBuilder::new()
            .description(Some(
                "One Server-Sent Event of a job's stream. `event` is `state`, `log`, `progress`, `output`,\n\
                 `end` or `error`; `data` is a JSON object; `id` (the job's event sequence number, for\n\
                 `Last-Event-ID`) is on every event but `output` and `end`.",
            ))
            .property(
                "id",
                ObjectBuilder::new().schema_type(SchemaType::from_iter([Type::String, Type::Null])),
            )
            .property("event", string())
            .required("event")
            .property("data", string())
            .required("data")
            .into()
    }
}
