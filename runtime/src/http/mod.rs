//! The HTTP API (axum), versioned under `/v1`. [`app`] builds the router; `wasmjobs serve`
//! binds it. Routes: modules, jobs (submit, get, list, events over SSE, cancel, retry),
//! schedules, `/healthz`, `/metrics`, `/openapi.json` (generated from the handlers: see
//! [`openapi`]).

mod auth;
mod dashboard;
mod error;
mod events;
mod jobs;
mod modules;
pub(crate) mod openapi;
mod queues;
mod runs;
mod schedules;
mod server;
mod stats;
mod tls;
mod webhooks;
mod workflows;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wasmjobs_host::Sandbox;

pub use auth::{Scope, Token};
pub use error::ApiError;
pub use server::{ConnectionLimits, serve};
pub use tls::acceptor as tls_acceptor;

use crate::caller::Caller;
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
    /// Permits for compiling uploads (`ApiConfig::max_concurrent_compiles`).
    pub compiles: Arc<tokio::sync::Semaphore>,
    /// The node this API runs beside, for `GET /readyz`: its id (which the write probe
    /// records) and, when it runs jobs, its health.
    pub node_id: String,
    pub node: Option<Arc<crate::scheduler::NodeHealth>>,
}

impl AppState {
    /// The state for `config`, its compile permits counted out.
    pub fn new(
        service: JobService,
        workflows: crate::workflow::WorkflowService,
        sandbox: Sandbox,
        modules: ModuleCache,
        config: ApiConfig,
    ) -> AppState {
        // The metrics recorder, installed before the first request is counted.
        crate::telemetry::handle();
        let compiles = Arc::new(tokio::sync::Semaphore::new(
            config.max_concurrent_compiles.max(1),
        ));
        AppState {
            service,
            workflows,
            sandbox,
            modules,
            config: Arc::new(config),
            compiles,
            node_id: crate::scheduler::default_node_id(),
            node: None,
        }
    }

    /// Readiness follows node `id` (with `health` when the node runs jobs).
    pub fn with_node(
        mut self,
        id: String,
        health: Option<Arc<crate::scheduler::NodeHealth>>,
    ) -> AppState {
        self.node_id = id;
        self.node = health;
        self
    }
}

/// API settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest module upload.
    pub max_module_bytes: usize,
    /// Largest JSON request body.
    pub max_body_bytes: usize,
    /// Largest workflow definition (JSON or YAML), as sent and as stored.
    pub max_definition_bytes: usize,
    /// Bearer tokens; empty means no authentication (loopback only, enforced by `serve`).
    pub tokens: Vec<Token>,
    /// Most modules stored; an upload of new bytes past it is refused (`507`).
    pub max_modules: usize,
    /// Most bytes of modules stored, all together.
    pub max_stored_module_bytes: u64,
    /// An upload whose compile takes longer is refused.
    pub compile_timeout: std::time::Duration,
    /// Uploads compiled at once; more wait their turn (each holds its body in memory).
    pub max_concurrent_compiles: usize,
    /// Origins whose pages may call the API from a browser (CORS); `*` for any. Empty: none
    /// (no CORS headers are sent).
    pub cors_allowed_origins: Vec<axum::http::HeaderValue>,
    /// Webhooks may call private, loopback and link-local addresses (`[webhooks]
    /// allow_private_targets`).
    pub allow_private_webhook_targets: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_module_bytes: 64 << 20,
            max_body_bytes: 32 << 20,
            max_definition_bytes: 1 << 20,
            tokens: Vec::new(),
            max_modules: 1000,
            max_stored_module_bytes: 4 << 30,
            compile_timeout: std::time::Duration::from_secs(60),
            max_concurrent_compiles: 2,
            cors_allowed_origins: Vec::new(),
            allow_private_webhook_targets: false,
        }
    }
}

/// The whole API as one router.
pub fn app(state: AppState) -> Router {
    let (router, _doc) = routes(&state.config).split_for_parts();
    let cors = cors(&state.config.cors_allowed_origins);
    // The dashboard is a page, not part of the API's document.
    let router = router
        .route("/", axum::routing::get(dashboard::index))
        .route("/ui/{file}", axum::routing::get(dashboard::asset))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .layer(axum::middleware::from_fn(refuse_nul))
        .layer(axum::middleware::from_fn(error::problems))
        .layer(axum::middleware::from_fn(count_request))
        .with_state(state);
    // Outermost: a browser's preflight is answered before authentication, which it cannot
    // pass (it carries no Authorization header).
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// The CORS layer for `origins` (`*`: any), or none when there are none.
fn cors(origins: &[axum::http::HeaderValue]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().cloned())
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("idempotency-key"),
                header::HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([header::LOCATION])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// The media type of Prometheus's text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// `GET /metrics` alone, with this process's counters and histograms: for a `worker`, which
/// serves no API (`--metrics-addr`).
pub fn metrics_app() -> Router {
    Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, PROMETHEUS_TEXT)],
                crate::telemetry::render(),
            )
        }),
    )
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
    // At most `max_concurrent_compiles` uploads are read and compiled at once: each holds
    // up to `max_module_bytes` in memory, and compiling is the dearest thing a client can ask.
    let upload = upload
        .layer::<_, std::convert::Infallible>(DefaultBodyLimit::max(config.max_module_bytes))
        .layer::<_, std::convert::Infallible>(tower::limit::ConcurrencyLimitLayer::new(
            config.max_concurrent_compiles.max(1),
        ));
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
        .routes(routes!(queues::list))
        .routes(routes!(queues::pause))
        .routes(routes!(queues::resume))
        .routes(routes!(schedules::add, schedules::list))
        .routes(routes!(schedules::delete))
        .routes({
            let (schemas, paths, create) = routes!(workflows::create, workflows::list);
            (
                schemas,
                paths,
                create.layer(DefaultBodyLimit::max(config.max_definition_bytes)),
            )
        })
        .routes(routes!(workflows::get))
        .routes(routes!(workflows::graph))
        .routes(routes!(runs::start))
        .routes(routes!(runs::list))
        .routes(routes!(runs::get))
        .routes(routes!(runs::events))
        .routes(routes!(runs::cancel))
        .routes(routes!(runs::retry))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::get, webhooks::update, webhooks::delete))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(stats::get))
        .layer(DefaultBodyLimit::max(config.max_body_bytes));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .nest("/v1", v1)
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

/// Liveness: the process answers (it does not look at the store: see `/readyz`).
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "health",
    tag = "service",
    security(()),
    responses((status = 200, description = "Up", body = openapi::Health))
)]
async fn healthz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok",
        store: state.service.store.backend(),
    })
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    status: &'static str,
    /// `sqlite` or `postgres`.
    store: &'static str,
}

/// Whether the node is ready: `ready`, or `not_ready` with the reasons.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Readiness {
    status: &'static str,
    /// `sqlite` or `postgres`.
    store: &'static str,
    /// Why not ready (empty when ready).
    reasons: Vec<String>,
}

/// How long the readiness check waits for the store's write.
const READY_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Readiness: the store takes a write (one row of `nodes`, committed), and this node can take
/// work (its completions are being written, so it claims). `503` with the reasons otherwise.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readiness",
    tag = "service",
    security(()),
    responses(
        (status = 200, description = "Ready", body = openapi::Readiness),
        (status = 503, description = "Not ready: the reasons say why", body = openapi::Readiness),
    )
)]
async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut reasons = Vec::new();
    let probe = state
        .service
        .store
        .probe_write(&state.node_id, crate::store::now_ms());
    match tokio::time::timeout(READY_PROBE_TIMEOUT, probe).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => reasons.push(format!("the store does not take writes: {e}")),
        Err(_) => reasons.push(format!(
            "the store did not take a write within {READY_PROBE_TIMEOUT:?}"
        )),
    }
    if let Some(why) = state.node.as_ref().and_then(|n| n.not_ready()) {
        reasons.push(format!("this node does not take work: {why}"));
    }
    let status = if reasons.is_empty() {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        status: if reasons.is_empty() {
            "ready"
        } else {
            "not_ready"
        },
        store: state.service.store.backend(),
        reasons,
    };
    (status, axum::Json(body)).into_response()
}

/// Prometheus text format: this process's counters and histograms, and the store's jobs by
/// state and by queue.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "service",
    responses(
        (status = 200, description = "Metrics", content_type = "text/plain", body = String),
        (status = 401, description = "No or unknown bearer token", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = openapi::Problem, content_type = "application/problem+json"),
    )
)]
async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    use std::fmt::Write;
    let jobs = state.service.store.count_unfinished().await?;
    let runs = state.workflows.runs().count_active_runs().await?;
    let queues = state.service.store.queues().await?;
    // This process's counters and histograms, then the store's unfinished jobs and runs (for
    // the whole installation; what ended is counted by `wasmjobs_jobs_ended_total`).
    let mut out = crate::telemetry::render();
    out.push_str("# HELP wasmjobs_jobs Jobs scheduled, queued and running, in the store.\n# TYPE wasmjobs_jobs gauge\n");
    for (st, n) in jobs {
        let _ = writeln!(out, "wasmjobs_jobs{{state=\"{st}\"}} {n}");
    }
    // Queue names are checked (`A-Z a-z 0-9 _ - .`): nothing in them needs escaping.
    out.push_str("# HELP wasmjobs_queue_jobs Jobs scheduled, queued and running in each queue, in the store.\n# TYPE wasmjobs_queue_jobs gauge\n");
    for q in &queues {
        let name = &q.settings.name;
        for (st, n) in [
            ("scheduled", q.scheduled),
            ("queued", q.queued),
            ("running", q.running),
        ] {
            let _ = writeln!(
                out,
                "wasmjobs_queue_jobs{{queue=\"{name}\",state=\"{st}\"}} {n}"
            );
        }
    }
    out.push_str("# HELP wasmjobs_queue_paused 1 while the queue is paused.\n# TYPE wasmjobs_queue_paused gauge\n");
    for q in &queues {
        let paused = u8::from(q.settings.paused);
        let _ = writeln!(
            out,
            "wasmjobs_queue_paused{{queue=\"{}\"}} {paused}",
            q.settings.name
        );
    }
    out.push_str("# HELP wasmjobs_workflow_runs Workflow runs running and cancelling, in the store.\n# TYPE wasmjobs_workflow_runs gauge\n");
    for (st, n) in runs {
        let _ = writeln!(out, "wasmjobs_workflow_runs{{state=\"{st}\"}} {n}");
    }
    Ok(([(axum::http::header::CONTENT_TYPE, PROMETHEUS_TEXT)], out).into_response())
}

/// This document (OpenAPI 3.1), built once.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapiDocument",
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

/// Hides the values of a job's environment grants (`grants.env`, which may hold secrets)
/// from every caller but an admin: the names stay, each value reads `"<redacted>"`.
pub(crate) fn redact_grants(grants: &mut serde_json::Value, caller: &Caller) {
    if caller.is_admin() {
        return;
    }
    if let Some(env) = grants.get_mut("env").and_then(|e| e.as_object_mut()) {
        for value in env.values_mut() {
            *value = serde_json::Value::from("<redacted>");
        }
    }
}

/// Refuses a path or query holding a NUL character (`%00`): no store can keep one, and every
/// path segment and query value is looked up in the store somewhere.
async fn refuse_nul(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let holds_nul = |s: &str| {
        s.as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(b"%00"))
    };
    if holds_nul(req.uri().path()) || req.uri().query().is_some_and(holds_nul) {
        return ApiError::bad_request(
            "the request's path or query contains a NUL character (%00), which cannot be stored or looked up",
        )
        .into_response();
    }
    next.run(req).await
}

/// Counts and times each request by method, route template (`/v1/jobs/{id}`, never the id)
/// and status, in a span with the same fields.
async fn count_request(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::Method;
    let method = match *req.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let span = tracing::debug_span!(
        "http_request",
        method,
        route = %route,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let response = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let took = started.elapsed();
    span.record("status", response.status().as_u16());
    span.record("latency_ms", took.as_secs_f64() * 1000.0);
    crate::telemetry::http_request(method, &route, response.status().as_u16(), took);
    response
}

/// A list's page size from `?limit=`: 1 to 1000, 50 when not given.
fn page_limit(limit: Option<&str>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(50),
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("invalid limit {l:?}: expected 1 to 1000"))
            }),
    }
}

/// Where a list's page starts, from `?cursor=` (the `next_cursor` of the page before): the id
/// the next page's items are older than.
fn page_cursor(cursor: Option<&str>) -> Result<Option<i64>, ApiError> {
    cursor
        .map(|c| {
            c.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid cursor {c:?}: pass the next_cursor of the previous page"
                ))
            })
        })
        .transpose()
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}
