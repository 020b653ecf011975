//! Server and worker configuration: flags, then `WASMJOBS_*` environment variables (both
//! through clap), then an optional `wasmjobs.toml`, then defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use wasmjobs_host::SandboxConfig;

use crate::admission::AdmissionPolicy;
use crate::http::Token;

/// The contents of `wasmjobs.toml`. Every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub db: Option<String>,
    pub addr: Option<SocketAddr>,
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    pub workers: Option<usize>,
    pub cache_dir: Option<PathBuf>,
    /// How long finished jobs are kept, e.g. "7d"; "0" or "forever" keeps them.
    pub retention: Option<String>,
    pub tokens: Vec<Token>,
    pub policy: Option<AdmissionPolicy>,
    pub sandbox: Option<SandboxConfig>,
    pub max_module_bytes: Option<String>,
    /// How long a claim holds a job without renewal, e.g. "15s": a dead node's jobs run again
    /// after this.
    pub lease: Option<String>,
    /// Most jobs a node claims beyond its free workers when attempts are short (see
    /// docs/scheduler.md, "Claiming ahead"); 0 claims only for free workers. Default 1024.
    pub claim_ahead: Option<usize>,
    /// On SIGTERM, how long running attempts may go on before they are stopped and their jobs
    /// given back to the queue, e.g. "30s" (default "10s").
    pub shutdown_grace: Option<String>,
    /// `[http]`: what one client may hold of the server.
    pub http: HttpSection,
    /// `[modules]`: the module store's quota, and compiling uploads.
    pub modules: ModulesSection,
}

/// `[http]` in `wasmjobs.toml` (docs/security.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Open connections at most (default 1024); more wait to be accepted.
    pub max_connections: Option<usize>,
    /// Time to send a request's headers, and the longest a kept-alive connection may sit idle
    /// (default "10s").
    pub header_read_timeout: Option<String>,
    /// Time to send a request's body (default "60s").
    pub request_body_timeout: Option<String>,
    /// Largest workflow definition, as sent and as stored (default "1MiB").
    pub max_definition_bytes: Option<String>,
}

/// `[modules]` in `wasmjobs.toml` (docs/security.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModulesSection {
    /// Most modules stored (default 1000).
    pub max_count: Option<usize>,
    /// Most bytes of modules stored, all together (default "4GiB").
    pub max_stored_bytes: Option<String>,
    /// An upload whose compile takes longer is refused (default "60s").
    pub compile_timeout: Option<String>,
    /// Uploads compiled at once (default 2).
    pub max_concurrent_compiles: Option<usize>,
    /// Compiled modules a node keeps in memory, the least recently used dropped first
    /// (default 256).
    pub max_loaded: Option<usize>,
}

impl FileConfig {
    /// Reads `path`, or `wasmjobs.toml` in the current directory if it exists, or nothing.
    pub fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from("wasmjobs.toml"), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(FileConfig::default());
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read config file {}", path.display()));
            }
        };
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// Where compiled artifacts go when not configured: `$XDG_CACHE_HOME/wasmjobs/artifacts` or
/// `~/.cache/wasmjobs/artifacts`, else `.wasmjobs-cache`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(x).join("wasmjobs/artifacts");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache/wasmjobs/artifacts");
    }
    PathBuf::from(".wasmjobs-cache")
}
