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
use crate::http::{ApiConfig, AppState};
use crate::scheduler::{ModuleCache, Node, NodeConfig};
use crate::service::JobService;

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
    /// This node's name in leases and attempts (default: host-pid-random).
    #[arg(long, env = "WASMJOBS_NODE_ID")]
    node_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Address to listen on. Without API tokens only loopback addresses are allowed.
    #[arg(long, env = "WASMJOBS_ADDR")]
    addr: Option<SocketAddr>,
    /// Serve the API without running jobs on this node.
    #[arg(long)]
    no_workers: bool,
}

struct Setup {
    file: FileConfig,
    service: JobService,
    sandbox: Sandbox,
    modules: ModuleCache,
    node: NodeConfig,
}

async fn setup(args: &NodeArgs) -> anyhow::Result<Setup> {
    let file = FileConfig::load(args.config.as_deref())?;
    let db = args
        .db
        .clone()
        .or_else(|| file.db.clone())
        .unwrap_or_else(|| "wasmjobs.db".to_string());
    let store = crate::store::open(&db)
        .await
        .with_context(|| format!("cannot open the store at {db}"))?;
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
    let modules = ModuleCache::new(Some(artifacts));
    let service = JobService::new(store, file.policy.clone().unwrap_or_default());
    tracing::info!(
        "store: {} ({db}); node {}; {} workers",
        service.store.backend(),
        node.node_id,
        node.concurrency
    );
    Ok(Setup {
        file,
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
    let max_module_bytes = match &s.file.max_module_bytes {
        Some(t) => usize::try_from(wasmjobs_host::units::parse_size(t)?).unwrap_or(usize::MAX),
        None => ApiConfig::default().max_module_bytes,
    };
    let workflows = crate::workflow::WorkflowService::new(s.service.clone());
    let engine = crate::workflow::engine::start(workflows.clone());
    let state = AppState {
        service: s.service.clone(),
        workflows,
        sandbox: s.sandbox.clone(),
        modules: s.modules.clone(),
        config: Arc::new(ApiConfig {
            max_module_bytes,
            tokens: s.file.tokens.clone(),
            ..ApiConfig::default()
        }),
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let node = (!args.no_workers).then(|| {
        Node::start(
            s.service.clone(),
            s.sandbox.clone(),
            s.modules.clone(),
            s.node.clone(),
        )
    });
    eprintln!(
        "wasmjobs listening on http://{} (store: {})",
        listener.local_addr()?,
        s.service.store.backend()
    );
    crate::http::serve(listener, state, shutdown_signal())
        .await
        .context("server")?;
    engine.shutdown().await;
    if let Some(node) = node {
        node.drain(SHUTDOWN_GRACE).await;
    }
    Ok(0)
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    node: NodeArgs,
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<u8> {
    let s = setup(&args.node).await?;
    if s.service.store.backend() == "sqlite" {
        eprintln!(
            "note: a worker on a SQLite file shares it only with processes on this machine; use Postgres for many nodes"
        );
    }
    let node = Node::start(s.service, s.sandbox, s.modules, s.node);
    eprintln!("wasmjobs worker running");
    shutdown_signal().await;
    tokio::time::timeout(Duration::from_secs(30), node.drain(SHUTDOWN_GRACE))
        .await
        .ok();
    Ok(0)
}

/// How long a node stopping on Ctrl-C or SIGTERM lets the attempts it holds finish before it
/// cancels them (`Node::drain`).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
