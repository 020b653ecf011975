//! `wasmjobs serve` (API + workers) and `wasmjobs worker` (workers only, for nodes sharing a
//! Postgres store).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use wasmjobs_host::{ArtifactCache, Sandbox, SandboxConfig};

use crate::config::{FileConfig, default_cache_dir};
use crate::http::{ApiConfig, AppState, ConnectionLimits};
use crate::scheduler::{ModuleCache, Node, NodeConfig};
use crate::service::JobService;
use crate::store::redacted_url;

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Database: a SQLite file path (default wasmjobs.db) or postgres://user@host/db.
    #[arg(long, env = "WASMJOBS_DB")]
    db: Option<String>,
    /// Attempts run at once on this node (default: the number of cores).
    #[arg(long, env = "WASMJOBS_WORKERS")]
    workers: Option<usize>,
    /// Directory for compiled artifacts.
    #[arg(long, env = "WASMJOBS_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Configuration file (default: ./wasmjobs.toml if present).
    #[arg(long, env = "WASMJOBS_CONFIG")]
    config: Option<PathBuf>,
    /// This node's name in leases and attempts (default: host-pid-random). Two live nodes
    /// must never share one: a node that starts under an id takes back at once the jobs an
    /// earlier process left running under it.
    #[arg(long, env = "WASMJOBS_NODE_ID")]
    node_id: Option<String>,
    /// On SIGTERM or Ctrl-C, how long running attempts may go on before they are stopped and
    /// their jobs given back to the queue, uncharged (default 10s).
    #[arg(long, env = "WASMJOBS_SHUTDOWN_GRACE")]
    shutdown_grace: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Address to listen on. Without API tokens only loopback addresses are allowed.
    #[arg(long, env = "WASMJOBS_ADDR")]
    addr: Option<SocketAddr>,
    /// Serve HTTPS with this PEM certificate chain, leaf first (needs --tls-key).
    #[arg(long, env = "WASMJOBS_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "WASMJOBS_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Serve the API without running jobs on this node.
    #[arg(long)]
    no_workers: bool,
}

struct Setup {
    file: FileConfig,
    /// How long a shutdown lets running attempts finish.
    grace: Duration,
    /// The whole store, for the services that use its parts.
    backend: Arc<dyn crate::store::Backend>,
    /// Carries notices to and from the other processes on the store; stopped last.
    relay: crate::notices::Relay,
    /// Reports this process's slots and ends to the store (the dashboard's overview).
    reporter: crate::activity::Reporter,
    /// Sends webhook deliveries and publishes events (docs/events.md).
    events: crate::events::Dispatcher,
    service: JobService,
    sandbox: Sandbox,
    modules: ModuleCache,
    node: NodeConfig,
}

async fn setup(args: &NodeArgs) -> anyhow::Result<Setup> {
    // The metrics recorder first, so that nothing the node counts from its start is lost.
    crate::telemetry::handle();
    let file = FileConfig::load(args.config.as_deref())?;
    crate::telemetry::set_module_labels(file.metrics.module_labels);
    let queues = file.queue_settings().context("invalid config")?;
    let webhooks = file.webhooks.settings().context("invalid config")?;
    let nats = file.events.nats().context("invalid config")?;
    let mut names = std::collections::HashSet::new();
    for token in &file.tokens {
        token
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid token in the configuration: {e}"))?;
        if !names.insert(token.name.as_str()) {
            bail!(
                "invalid token in the configuration: two tokens are named {:?}",
                token.name
            );
        }
    }
    let db = args
        .db
        .clone()
        .or_else(|| file.db.clone())
        .unwrap_or_else(|| "wasmjobs.db".to_string());
    let store = crate::store::open(&db)
        .await
        .with_context(|| format!("cannot open the store at {}", redacted_url(&db)))?;
    let mut node = NodeConfig::default();
    if let Some(w) = args.workers.or(file.workers) {
        if w == 0 {
            bail!("--workers must be at least 1");
        }
        node.concurrency = w;
    }
    if let Some(n) = file.claim_ahead {
        node.claim_ahead = n;
    }
    if let Some(id) = &args.node_id {
        node.node_id = id.clone();
    }
    if let Some(l) = &file.lease {
        node.lease = wasmjobs_host::units::parse_duration(l).context("lease")?;
        node.heartbeat = (node.lease / 4).min(node.heartbeat);
    }
    if let Some(r) = &file.retention {
        node.retention = match r.as_str() {
            "0" | "forever" => None,
            text => Some(wasmjobs_host::units::parse_duration(text).context("retention")?),
        };
    }
    let sandbox_config = file.sandbox.clone().unwrap_or_else(|| SandboxConfig {
        max_instances: u32::try_from(node.concurrency * 2 + 8).unwrap_or(1000),
        ..SandboxConfig::default()
    });
    let sandbox = Sandbox::new(&sandbox_config)?;
    let cache_dir = args
        .cache_dir
        .clone()
        .or_else(|| file.cache_dir.clone())
        .unwrap_or_else(default_cache_dir);
    let artifacts = ArtifactCache::new(&cache_dir).with_context(|| {
        format!(
            "cannot create the artifact cache directory {}",
            cache_dir.display()
        )
    })?;
    let modules = ModuleCache::new(Some(artifacts)).max_loaded(
        file.modules
            .max_loaded
            .unwrap_or(ModuleCache::DEFAULT_MAX_LOADED),
    );
    let service = JobService::new(store.clone(), file.policy.clone().unwrap_or_default());
    tracing::info!(
        "store: {} ({}); node {}; {} workers",
        service.store.backend(),
        redacted_url(&db),
        node.node_id,
        node.concurrency
    );
    let grace = match args
        .shutdown_grace
        .as_ref()
        .or(file.shutdown_grace.as_ref())
    {
        Some(t) => wasmjobs_host::units::parse_duration(t).context("shutdown_grace")?,
        None => DEFAULT_SHUTDOWN_GRACE,
    };
    // A store that cannot take a write now will not take the node's claims either: say so
    // before starting, with what to do.
    if let Err(e) = store
        .probe_write(&node.node_id, crate::store::now_ms())
        .await
    {
        bail!(
            "the store at {} does not take writes ({e}): check that the disk has space and that the database (file or server) is writable by this user, then start again",
            redacted_url(&db)
        );
    }
    if !queues.is_empty() {
        store
            .configure_queues(&queues, crate::store::now_ms())
            .await
            .with_context(|| {
                format!("cannot write the queues' settings to {}", redacted_url(&db))
            })?;
    }
    let relay = crate::notices::Relay::start(&*store)
        .await
        .with_context(|| format!("cannot listen for changes on {}", redacted_url(&db)))?;
    let reporter = crate::activity::Reporter::start(store.clone(), node.node_id.clone());
    let publisher = match &nats {
        Some(settings) => {
            let publisher = crate::events::nats::Publisher::connect(settings).await?;
            // From now on every state change is kept in the outbox until it is published.
            store
                .sink_seen("nats", crate::store::now_ms())
                .await
                .context("cannot register the NATS publisher in the store")?;
            tracing::info!(
                "publishing events to NATS at {} on {}.job.<state> and {}.run.<state> (stream {})",
                settings.url,
                settings.subject_prefix,
                settings.subject_prefix,
                settings.stream
            );
            Some(publisher)
        }
        None => None,
    };
    let events = crate::events::Dispatcher::start(store.clone(), webhooks, publisher)?;
    Ok(Setup {
        file,
        grace,
        backend: store,
        relay,
        reporter,
        events,
        service,
        sandbox,
        modules,
        node,
    })
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<u8> {
    let s = setup(&args.node).await?;
    let addr = args
        .addr
        .or(s.file.addr)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    if s.file.tokens.is_empty() && !addr.ip().is_loopback() {
        bail!(
            "refusing to listen on {addr} without API tokens: configure tokens in wasmjobs.toml, or listen on a loopback address"
        );
    }
    let tls = match (
        args.tls_cert.as_ref().or(s.file.tls_cert.as_ref()),
        args.tls_key.as_ref().or(s.file.tls_key.as_ref()),
    ) {
        (Some(cert), Some(key)) => Some(crate::http::tls_acceptor(cert, key)?),
        (None, None) => None,
        (Some(_), None) => {
            bail!("--tls-cert (tls_cert) needs --tls-key (tls_key): the certificate's private key")
        }
        (None, Some(_)) => {
            bail!("--tls-key (tls_key) needs --tls-cert (tls_cert): the certificate it goes with")
        }
    };
    if tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            "serving plain HTTP on {addr}: tokens and job data cross the network in clear text unless a proxy in front terminates TLS (--tls-cert, --tls-key)"
        );
    }
    let (config, limits) = api_config(&s.file)?;
    let workflows = crate::workflow::WorkflowService::new(s.service.clone(), s.backend.clone());
    let engine = crate::workflow::engine::start(workflows.clone());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let node = (!args.no_workers).then(|| {
        Node::start(
            s.service.clone(),
            Some(workflows.clone()),
            s.sandbox.clone(),
            s.modules.clone(),
            s.node.clone(),
        )
    });
    let state = AppState::new(
        s.service.clone(),
        workflows,
        s.sandbox.clone(),
        s.modules.clone(),
        config,
    )
    .with_node(s.node.node_id.clone(), node.as_ref().map(Node::health));
    eprintln!(
        "wasmjobs listening on {}://{} (store: {})",
        if tls.is_some() { "https" } else { "http" },
        listener.local_addr()?,
        s.service.store.backend()
    );
    // On the signal the API stops taking requests and the node drains at the same time: an
    // idle server is gone at once, a busy one within the grace.
    let stop = tokio_util::sync::CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal.cancel();
    });
    let server = crate::http::serve(listener, state, limits, tls, stop.clone().cancelled_owned());
    let drain = async {
        stop.cancelled().await;
        engine.shutdown().await;
        if let Some(node) = node {
            node.drain(s.grace).await;
        }
    };
    let (served, ()) = tokio::join!(server, drain);
    s.events.shutdown().await;
    s.reporter.shutdown().await;
    s.relay.shutdown().await;
    served.context("server")?;
    Ok(0)
}

/// The API's settings and the connection limits from `wasmjobs.toml`, defaults elsewhere.
fn api_config(file: &FileConfig) -> anyhow::Result<(ApiConfig, ConnectionLimits)> {
    use crate::config::{duration_setting as duration, size_setting as size};
    let d = ApiConfig::default();
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let config = ApiConfig {
        max_module_bytes: to_usize(size(
            "max_module_bytes",
            &file.max_module_bytes,
            d.max_module_bytes as u64,
        )?),
        max_definition_bytes: to_usize(size(
            "http.max_definition_bytes",
            &file.http.max_definition_bytes,
            d.max_definition_bytes as u64,
        )?),
        tokens: file.tokens.clone(),
        max_modules: file.modules.max_count.unwrap_or(d.max_modules),
        max_stored_module_bytes: size(
            "modules.max_stored_bytes",
            &file.modules.max_stored_bytes,
            d.max_stored_module_bytes,
        )?,
        compile_timeout: duration(
            "modules.compile_timeout",
            &file.modules.compile_timeout,
            d.compile_timeout,
        )?,
        max_concurrent_compiles: file
            .modules
            .max_concurrent_compiles
            .unwrap_or(d.max_concurrent_compiles),
        allow_private_webhook_targets: file.webhooks.allow_private_targets,
        cors_allowed_origins: file
            .http
            .cors_allowed_origins
            .iter()
            .map(|origin| cors_origin(origin))
            .collect::<anyhow::Result<_>>()?,
        ..d
    };
    let c = ConnectionLimits::default();
    let limits = ConnectionLimits {
        max_connections: file.http.max_connections.unwrap_or(c.max_connections),
        header_read_timeout: duration(
            "http.header_read_timeout",
            &file.http.header_read_timeout,
            c.header_read_timeout,
        )?,
        request_body_timeout: duration(
            "http.request_body_timeout",
            &file.http.request_body_timeout,
            c.request_body_timeout,
        )?,
    };
    if limits.max_connections == 0 || config.max_concurrent_compiles == 0 {
        bail!("http.max_connections and modules.max_concurrent_compiles must be at least 1");
    }
    Ok((config, limits))
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Serve this node's metrics (GET /metrics, Prometheus text) on this address; a worker
    /// has no API, so without it its counters are not exposed.
    #[arg(long, env = "WASMJOBS_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<u8> {
    let s = setup(&args.node).await?;
    if s.service.store.backend() == "sqlite" {
        eprintln!(
            "note: a worker on a SQLite file shares it only with processes on this machine; use Postgres for many nodes"
        );
    }
    let metrics = match args.metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?;
            eprintln!("metrics on http://{}/metrics", listener.local_addr()?);
            Some(tokio::spawn(async move {
                let _ = axum::serve(listener, crate::http::metrics_app()).await;
            }))
        }
        None => None,
    };
    let workflows = crate::workflow::WorkflowService::new(s.service.clone(), s.backend.clone());
    let node = Node::start(s.service, Some(workflows), s.sandbox, s.modules, s.node);
    eprintln!("wasmjobs worker running");
    shutdown_signal().await;
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    // The drain itself is bounded by the grace; this bounds a store that hangs besides.
    tokio::time::timeout(s.grace + Duration::from_secs(20), async {
        node.drain(s.grace).await;
        s.events.shutdown().await;
        s.reporter.shutdown().await;
        s.relay.shutdown().await;
    })
    .await
    .ok();
    Ok(0)
}

/// One of `http.cors_allowed_origins`: `*`, or an origin (`scheme://host[:port]`, no path).
fn cors_origin(origin: &str) -> anyhow::Result<axum::http::HeaderValue> {
    let valid = origin == "*"
        || ((origin.starts_with("https://") || origin.starts_with("http://"))
            && !origin
                .split_once("://")
                .is_some_and(|(_, rest)| rest.is_empty() || rest.contains('/')));
    if !valid {
        bail!(
            "http.cors_allowed_origins: {origin:?} is not an origin: expected scheme://host[:port] (no path, no trailing slash) or \"*\""
        );
    }
    axum::http::HeaderValue::from_str(origin)
        .with_context(|| format!("http.cors_allowed_origins: {origin:?}"))
}

/// How long a node stopping on Ctrl-C or SIGTERM lets running attempts finish before it
/// stops them and gives their jobs back (`Node::drain`), unless configured.
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cors_origins_are_origins() {
        for good in ["*", "https://app.example.com", "http://localhost:3000"] {
            assert!(super::cors_origin(good).is_ok(), "{good}");
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://x/y",
            "https://",
            "ftp://x",
        ] {
            let e = super::cors_origin(bad).expect_err(bad).to_string();
            assert!(e.contains("cors_allowed_origins") && e.contains(bad), "{e}");
        }
    }
}
