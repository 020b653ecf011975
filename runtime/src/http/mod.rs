//! The HTTP API (axum), versioned under `/v1`. [`app`] builds the router; `wasmjobs serve`
//! binds it. Routes: modules, jobs (submit, get, list, events over SSE, cancel, retry),
//! schedules, `/healthz`, `/metrics`, `/openapi.json` (generated from the handlers: see
//! [`openapi`]).

mod auth;
mod error;
mod events;
mod jobs;
mod modules;
pub(crate) mod openapi;
mod runs;
mod schedules;
mod workflows;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wasmjobs_host::Sandbox;

pub use auth::{Scope, Token};
pub use error::ApiError;

use crate::scheduler::ModuleCache;
use crate::service::JobService;

/// What the API needs.
#[derive(Clone)]
pub struct AppState {
    pub service: JobService,
    pub workflows: crate::workflow::WorkflowService,
    pub sandbox: Sandbox,
    pub modules: ModuleCache,
    pub config: Arc<ApiConfig>,
}

/// API settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest module upload.
    pub max_module_bytes: usize,
    /// Largest JSON request body.
    pub max_body_bytes: usize,
    /// Bearer tokens; empty means no authentication (loopback only, enforced by `serve`).
    pub tokens: Vec<Token>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_module_bytes: 64 << 20,
            max_body_bytes: 32 << 20,
            tokens: Vec::new(),
        }
    }
}

/// The whole API as one router.
pub fn app(state: AppState) -> Router {
    let (router, _doc) = routes(&state.config).split_for_parts();
    router
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .with_state(state)
}

/// The OpenAPI 3.1 document of [`app`], as `GET /openapi.json` serves it.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    routes(&ApiConfig::default()).split_for_parts().1
}

/// Every documented route. Handlers are registered only through `routes!`, which also adds
/// their `#[utoipa::path]` to the document: nothing is served undocumented.
fn routes(config: &ApiConfig) -> OpenApiRouter<AppState> {
    use utoipa::OpenApi as _;
    let (schemas, paths, upload) = routes!(modules::upload);
    let upload = upload.layer(DefaultBodyLimit::max(config.max_module_bytes));
    let v1 = OpenApiRouter::new()
        .routes((schemas, paths, upload))
        .routes(routes!(modules::list))
        .routes(routes!(modules::get))
        .routes(routes!(modules::wasm))
        .routes(routes!(jobs::submit, jobs::list))
        .routes(routes!(jobs::submit_batch))
        .routes(routes!(jobs::get))
        .routes(routes!(events::job_events))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::retry))
        .routes(routes!(schedules::add, schedules::list))
        .routes(routes!(schedules::delete))
        .routes(routes!(workflows::create, workflows::list))
        .routes(routes!(workflows::get))
        .routes(routes!(workflows::graph))
        .routes(routes!(runs::start))
        .routes(routes!(runs::get))
        .routes(routes!(runs::events))
        .routes(routes!(runs::cancel))
        .layer(DefaultBodyLimit::max(config.max_body_bytes));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .nest("/v1", v1)
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

/// Serves the API on `listener` until `shutdown` completes. Sets TCP_NODELAY on every
/// connection: without it, small responses on kept-alive connections wait out delayed ACKs
/// (~40 ms each).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!("cannot set TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Liveness and the store backend.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "service",
    security(()),
    responses((status = 200, description = "Up", body = openapi::Health))
)]
async fn healthz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok", "store": state.service.store.backend() }))
}

/// Prometheus text format: jobs by state.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    responses(
        (status = 200, description = "Metrics", content_type = "text/plain", body = String),
        (status = 401, description = "No or unknown bearer token", body = openapi::ErrorBody),
        (status = 403, description = "The token's scope does not allow this", body = openapi::ErrorBody),
    )
)]
async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    use std::fmt::Write;
    let counts = state.service.store.count_by_state().await?;
    let mut out = String::from(
        "# HELP wasmjobs_jobs Jobs in the store by state.\n# TYPE wasmjobs_jobs gauge\n",
    );
    for st in crate::store::JobState::ALL {
        let n = counts.iter().find(|(s, _)| *s == st).map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "wasmjobs_jobs{{state=\"{st}\"}} {n}");
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response())
}

/// This document (OpenAPI 3.1), built once.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "service",
    security(()),
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
async fn openapi_json() -> axum::response::Response {
    use axum::response::IntoResponse;
    static DOC: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| serde_json::to_vec(&openapi_document()).unwrap_or_default());
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.clone(),
    )
        .into_response()
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}
