//! `wasmjobs-edge-host`: an HTTP server that runs one sandboxed job component per request.
//!
//! Each route of the config names a precompiled artifact (`wasmjobs compile job.wasm`) and the
//! limits one request may use. The request body is the job's input, its output the response
//! body, and its outcome picks the status code. This build links `wasmjobs-host` without a
//! compiler: it loads artifacts only, never compiles wasm. See README.md beside this file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use serde::Deserialize;
use wasmjobs_host::{
    AttemptReport, JobModule, Limits, Outcome, RunRequest, Sandbox, SandboxConfig,
};

mod tls;

/// Serve job components over HTTP, one fresh sandbox per request.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The route table (TOML). Artifact paths in it are relative to the file.
    #[arg(long, short, default_value = "edge.toml")]
    config: PathBuf,
    /// Address to listen on, overriding `listen` in the config (`127.0.0.1:0` picks a port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serve HTTPS with this PEM certificate chain, leaf first (overrides `tls_cert`; needs a
    /// key).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of the certificate (overrides `tls_key`).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
}

/// The config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    /// Serve HTTPS with this PEM certificate chain (relative to the config file); needs
    /// `tls_key`.
    tls_cert: Option<PathBuf>,
    /// The PEM private key of `tls_cert` (relative to the config file).
    tls_key: Option<PathBuf>,
    /// Engine settings. They must match those the artifacts were compiled with (the defaults
    /// match `wasmjobs compile`); `max_instances` is free and caps concurrent requests.
    #[serde(default)]
    sandbox: Option<SandboxConfig>,
    #[serde(rename = "route", default)]
    routes: Vec<RouteConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteConfig {
    /// URL path, e.g. `/render`. Requests are `POST`s with the input as the body.
    path: String,
    /// A precompiled artifact (`.cwasm`), relative to the config file.
    artifact: PathBuf,
    /// Content type of a successful response.
    #[serde(default = "default_content_type")]
    content_type: String,
    /// Largest request body; more is refused with 413 before the job runs.
    #[serde(default = "default_max_input")]
    max_input: String,
    /// Fuel, memory, timeout, output and log limits of one request (`wasmjobs_host::Limits`).
    #[serde(default)]
    limits: Limits,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_content_type() -> String {
    "application/octet-stream".into()
}

fn default_max_input() -> String {
    "1MiB".into()
}

/// One route, loaded and ready: the prepared component and its limits.
struct Route {
    sandbox: Sandbox,
    module: JobModule,
    limits: Limits,
    content_type: HeaderValue,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match serve(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read the config {}", args.config.display()))?;
    let config: ConfigFile = toml::from_str(&text)
        .with_context(|| format!("invalid config {}", args.config.display()))?;
    let base = args.config.parent().unwrap_or(Path::new("."));
    let (app, count) = build_app(&config, base)?;
    let addr = args.listen.unwrap_or(config.listen);
    let tls = match (
        args.tls_cert
            .or_else(|| config.tls_cert.map(|p| base.join(p))),
        args.tls_key
            .or_else(|| config.tls_key.map(|p| base.join(p))),
    ) {
        (Some(cert), Some(key)) => Some(tls::acceptor(&cert, &key)?),
        (None, None) => None,
        _ => anyhow::bail!("TLS needs both a certificate and its key (tls_cert and tls_key)"),
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    // Tests and the benchmark read this line to learn the port.
    println!(
        "listening on {}://{} ({count} routes)",
        if tls.is_some() { "https" } else { "http" },
        listener.local_addr()?
    );
    match tls {
        None => axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("server error"),
        Some(tls) => {
            tls::serve(listener, tls, app, shutdown_signal()).await;
            Ok(())
        }
    }
}

/// Loads every route's artifact and builds the router.
fn build_app(config: &ConfigFile, base: &Path) -> anyhow::Result<(Router, usize)> {
    if config.routes.is_empty() {
        anyhow::bail!("the config has no [[route]]: nothing to serve");
    }
    let sandbox_config = config.sandbox.clone().unwrap_or_else(|| SandboxConfig {
        max_instances: 256,
        ..SandboxConfig::default()
    });
    let sandbox = Sandbox::new(&sandbox_config)?;
    let mut app = Router::new();
    let mut table = Vec::new();
    for r in &config.routes {
        if !r.path.starts_with('/') || r.path == "/healthz" {
            anyhow::bail!(
                "route {:?}: a path must start with '/' and may not be /healthz",
                r.path
            );
        }
        if table.iter().any(|(p, _): &(String, String)| *p == r.path) {
            anyhow::bail!("route {:?} is listed twice", r.path);
        }
        let max_input = wasmjobs_host::units::parse_size(&r.max_input)
            .with_context(|| format!("route {}: max_input {:?}", r.path, r.max_input))?;
        let path = base.join(&r.artifact);
        // SAFETY: the artifacts are the operator's own, named in the operator's config file,
        // made by `wasmjobs compile` and deployed beside it; they are not edited while the
        // host runs (deploy new files and restart).
        #[allow(unsafe_code)]
        let module = unsafe { sandbox.load_artifact_file(&path) }
            .with_context(|| format!("route {}: cannot load {}", r.path, path.display()))?;
        let content_type = HeaderValue::from_str(&r.content_type)
            .with_context(|| format!("route {}: content_type {:?}", r.path, r.content_type))?;
        table.push((r.path.clone(), module.info().digest.clone()));
        let route = Arc::new(Route {
            sandbox: sandbox.clone(),
            module,
            limits: r.limits,
            content_type,
        });
        app = app.route(
            &r.path,
            post(run_job).with_state(route).layer(DefaultBodyLimit::max(
                usize::try_from(max_input).unwrap_or(usize::MAX),
            )),
        );
    }
    let count = table.len();
    let health = serde_json::json!({
        "status": "ok",
        "routes": table.iter().map(|(p, d)| serde_json::json!({"path": p, "digest": d})).collect::<Vec<_>>(),
    });
    app = app
        .route(
            "/healthz",
            get(move || async move { axum::Json(health.clone()) }),
        )
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no route here; GET /healthz lists them",
            )
        });
    Ok((app, count))
}

/// One request: one fresh sandboxed instance of the route's job.
async fn run_job(State(route): State<Arc<Route>>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status();
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "input_too_large"
            } else {
                "bad_request"
            };
            return error(status, code, &rejection.body_text());
        }
    };
    // If the client goes away, axum drops this future and with it the running instance.
    let report = route
        .sandbox
        .run(
            &route.module,
            RunRequest::new(Arc::<[u8]>::from(&body[..])).limits(route.limits),
        )
        .await;
    respond(&route, report)
}

/// The status code each outcome answers with (README.md documents the table).
fn status_for(outcome: Outcome) -> StatusCode {
    match outcome {
        Outcome::Succeeded => StatusCode::OK,
        // The job looked at the input and refused it.
        Outcome::Failed => StatusCode::UNPROCESSABLE_ENTITY,
        Outcome::Trapped => StatusCode::INTERNAL_SERVER_ERROR,
        Outcome::TimedOut => StatusCode::GATEWAY_TIMEOUT,
        // The request needed more compute than the route grants.
        Outcome::OutOfFuel => StatusCode::TOO_MANY_REQUESTS,
        Outcome::OutOfMemory => StatusCode::INSUFFICIENT_STORAGE,
        // The job produced a response this route will not send.
        Outcome::OutputTooLarge => StatusCode::BAD_GATEWAY,
        Outcome::Cancelled | Outcome::Lost => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn respond(route: &Route, report: AttemptReport) -> Response {
    let status = status_for(report.outcome);
    let mut response = if report.outcome == Outcome::Succeeded {
        let mut r = Response::new(axum::body::Body::from(report.output));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, route.content_type.clone());
        r
    } else {
        let mut message = report.error.unwrap_or_default();
        if let Some(trap) = report.trap {
            message = format!("{trap}: {message}");
        }
        error(status, report.outcome.as_str(), &message)
    };
    let headers = response.headers_mut();
    headers.insert(
        "x-wasmjobs-outcome",
        HeaderValue::from_static(report.outcome.as_str()),
    );
    headers.insert("x-wasmjobs-fuel", HeaderValue::from(report.fuel_consumed));
    headers.insert(
        "x-wasmjobs-wall-us",
        HeaderValue::from(u64::try_from(report.wall_time.as_micros()).unwrap_or(u64::MAX)),
    );
    headers.insert(
        "x-wasmjobs-peak-memory",
        HeaderValue::from(report.peak_memory_bytes),
    );
    response
}

/// The error shape of the wasmjobs HTTP API: `{"error": {"code", "message"}}`.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
