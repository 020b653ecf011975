//! The HTTP API (axum), versioned under `/v1`. [`app`] builds the router; `wasmjobs serve`
//! binds it. Routes: modules, jobs (submit, get, list, events over SSE, cancel, retry),
//! schedules, `/healthz`.

mod auth;
mod error;
mod events;
mod jobs;
mod modules;
mod schedules;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use wasmjobs_host::Sandbox;

pub use auth::{Scope, Token};
pub use error::ApiError;

use crate::scheduler::ModuleCache;
use crate::service::JobService;

/// What the API needs.
#[derive(Clone)]
pub struct AppState {
    pub service: JobService,
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
    let module_limit = state.config.max_module_bytes;
    let body_limit = state.config.max_body_bytes;
    let v1 = Router::new()
        .route(
            "/modules",
            post(modules::upload)
                .layer(DefaultBodyLimit::max(module_limit))
                .get(modules::list),
        )
        .route("/modules/{key}", get(modules::get))
        .route("/modules/{key}/wasm", get(modules::wasm))
        .route("/jobs", post(jobs::submit).get(jobs::list))
        .route("/jobs/{id}", get(jobs::get))
        .route("/jobs/{id}/events", get(events::job_events))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/jobs/{id}/retry", post(jobs::retry))
        .route("/schedules", post(schedules::add).get(schedules::list))
        .route("/schedules/{key}", axum::routing::delete(schedules::delete))
        .layer(DefaultBodyLimit::max(body_limit));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .with_state(state)
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

async fn healthz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok", "store": state.service.store.backend() }))
}

/// Prometheus text format: jobs by state.
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

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}
