//! Server and worker configuration: flags, then `WASMJOBS_*` environment variables (both
//! through clap), then an optional `wasmjobs.toml`, then defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use wasmjobs_host::SandboxConfig;

use crate::admission::AdmissionPolicy;
use crate::http::Token;
use crate::store::queues::{QueueSettings, Rate, check_queue_name};

/// The contents of `wasmjobs.toml`. Every field is optional. `docs/serving.md` lists every key
/// in one table, which a test checks against this type.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
    /// `[metrics]`: what `GET /metrics` labels.
    pub metrics: MetricsSection,
    /// `[queues.NAME]`: a queue's weight, limits and pause (docs/scheduler.md, "Queues").
    pub queues: std::collections::BTreeMap<String, QueueSection>,
    /// `[webhooks]`: how webhook deliveries are made (docs/events.md).
    pub webhooks: WebhooksSection,
    /// `[events]`: where else events are published (docs/events.md).
    pub events: EventsSection,
}

/// A duration key's value (`250ms`, `10s`, `7d`), or `default` when it is not given; an error
/// names the key.
pub fn duration_setting(
    key: &str,
    text: &Option<String>,
    default: std::time::Duration,
) -> anyhow::Result<std::time::Duration> {
    use anyhow::Context as _;
    match text {
        Some(t) => wasmjobs_host::units::parse_duration(t).with_context(|| key.to_string()),
        None => Ok(default),
    }
}

/// A size key's value in bytes (`64MiB`, `512KB`, bytes), or `default` when it is not given;
/// an error names the key.
pub fn size_setting(key: &str, text: &Option<String>, default: u64) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    match text {
        Some(t) => wasmjobs_host::units::parse_size(t).with_context(|| key.to_string()),
        None => Ok(default),
    }
}

/// `[webhooks]` in `wasmjobs.toml` (docs/events.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksSection {
    /// Let webhooks call private, loopback and link-local addresses (default false).
    pub allow_private_targets: bool,
    /// Longest a call may take (default "10s").
    pub timeout: Option<String>,
    /// How long a delivery is retried before it is dead (default "1d").
    pub retry_for: Option<String>,
    /// The first retry's delay, doubled at each next one up to an hour (default "5s").
    pub retry_delay: Option<String>,
    /// A webhook whose deliveries have all failed for this long is disabled (default "5d").
    pub disable_after: Option<String>,
    /// The largest job output a payload carries (default "64KiB").
    pub max_output_bytes: Option<String>,
    /// How long delivered and dead deliveries are kept (default "7d").
    pub keep_deliveries: Option<String>,
}

/// `[events]` in `wasmjobs.toml` (docs/events.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsSection {
    /// Publish every state change to NATS JetStream at this URL (`nats://host:4222`).
    pub nats: Option<String>,
    /// The subjects' prefix (default "wasmjobs").
    pub subject_prefix: Option<String>,
    /// The JetStream stream for the subjects, created when missing (default "WASMJOBS").
    pub nats_stream: Option<String>,
}

impl WebhooksSection {
    /// The settings, checked.
    pub fn settings(&self) -> anyhow::Result<crate::events::WebhookSettings> {
        let d = crate::events::WebhookSettings::default();
        let duration = |key: &str, v: &Option<String>, default| {
            duration_setting(&format!("webhooks.{key}"), v, default)
        };
        let settings = crate::events::WebhookSettings {
            allow_private_targets: self.allow_private_targets,
            timeout: duration("timeout", &self.timeout, d.timeout)?,
            retry_for: duration("retry_for", &self.retry_for, d.retry_for)?,
            retry_delay: duration("retry_delay", &self.retry_delay, d.retry_delay)?,
            disable_after: duration("disable_after", &self.disable_after, d.disable_after)?,
            max_output_bytes: usize::try_from(size_setting(
                "webhooks.max_output_bytes",
                &self.max_output_bytes,
                d.max_output_bytes as u64,
            )?)
            .unwrap_or(usize::MAX),
            keep_deliveries: duration("keep_deliveries", &self.keep_deliveries, d.keep_deliveries)?,
        };
        if settings.timeout.is_zero() || settings.retry_delay.is_zero() {
            anyhow::bail!("webhooks.timeout and webhooks.retry_delay must be more than 0");
        }
        Ok(settings)
    }
}

impl EventsSection {
    /// The NATS settings when `nats` is set, checked.
    pub fn nats(&self) -> anyhow::Result<Option<crate::events::nats::NatsSettings>> {
        let Some(url) = &self.nats else {
            return Ok(None);
        };
        if !(url.starts_with("nats://") || url.starts_with("tls://")) {
            anyhow::bail!("events.nats: {url:?} is not a NATS URL: expected nats://host:port");
        }
        let token_ok = |what: &str, t: &str| {
            if t.is_empty()
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                anyhow::bail!(
                    "events.{what}: {t:?} must be letters, digits, _ or - (and not empty)"
                );
            }
            Ok(())
        };
        let prefix = self
            .subject_prefix
            .clone()
            .unwrap_or_else(|| "wasmjobs".into());
        for part in prefix.split('.') {
            token_ok("subject_prefix", part)?;
        }
        let stream = self
            .nats_stream
            .clone()
            .unwrap_or_else(|| "WASMJOBS".into());
        token_ok("nats_stream", &stream)?;
        Ok(Some(crate::events::nats::NatsSettings {
            url: url.clone(),
            subject_prefix: prefix,
            stream,
        }))
    }
}

/// `[queues.NAME]` in `wasmjobs.toml`: a queue's settings, written to the store when a server
/// or worker starts (for every node sharing it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSection {
    /// Its share of a node's slots among the queues with work (default 1).
    pub weight: Option<u32>,
    /// At most this many of its jobs run at once, across every node (default: no limit).
    pub max_running: Option<u32>,
    /// At most this many starts per unit of time across every node, e.g. "100/s", "5000/min".
    pub rate: Option<Rate>,
    /// Pause it when this process starts (resume through the API or CLI).
    pub paused: bool,
}

impl FileConfig {
    /// The queues this file declares, checked: names, a weight and a `max_running` of at
    /// least 1.
    pub fn queue_settings(&self) -> anyhow::Result<Vec<QueueSettings>> {
        let mut out = Vec::with_capacity(self.queues.len());
        for (name, q) in &self.queues {
            check_queue_name(name).map_err(|e| anyhow::anyhow!("[queues.{name}]: {e}"))?;
            if q.weight == Some(0) {
                anyhow::bail!("[queues.{name}]: weight must be at least 1");
            }
            if q.max_running == Some(0) {
                anyhow::bail!(
                    "[queues.{name}]: max_running must be at least 1 (to stop the queue, set paused = true)"
                );
            }
            out.push(QueueSettings {
                name: name.clone(),
                weight: q.weight.unwrap_or(1),
                max_running: q.max_running,
                rate: q.rate,
                paused: q.paused,
            });
        }
        Ok(out)
    }
}

/// `[metrics]` in `wasmjobs.toml` (docs/observability.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// Label the attempt metrics with the module's digest (default false: each module then
    /// makes series of its own).
    pub module_labels: bool,
}

/// `[http]` in `wasmjobs.toml` (docs/security.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
    /// Origins whose pages may call the API from a browser (CORS), e.g.
    /// `["https://app.example.com"]`; `["*"]` for any. Default: none.
    pub cors_allowed_origins: Vec<String>,
}

/// `[modules]` in `wasmjobs.toml` (docs/security.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every key `wasmjobs.toml` takes, dotted (`http.max_connections`, `tokens[].name`): from
    /// a configuration with every field set, written out in full below so that a new field
    /// does not compile until it is added here, and so to the reference.
    fn config_keys() -> BTreeSet<String> {
        let full = FileConfig {
            db: Some(String::new()),
            addr: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            tls_cert: Some(PathBuf::new()),
            tls_key: Some(PathBuf::new()),
            workers: Some(1),
            cache_dir: Some(PathBuf::new()),
            retention: Some(String::new()),
            tokens: vec![Token::from_secret("t", "s", crate::http::Scope::Read)],
            policy: Some(AdmissionPolicy::default()),
            sandbox: Some(SandboxConfig::default()),
            max_module_bytes: Some(String::new()),
            lease: Some(String::new()),
            claim_ahead: Some(1),
            shutdown_grace: Some(String::new()),
            http: HttpSection {
                max_connections: Some(1),
                header_read_timeout: Some(String::new()),
                request_body_timeout: Some(String::new()),
                max_definition_bytes: Some(String::new()),
                cors_allowed_origins: vec![String::new()],
            },
            modules: ModulesSection {
                max_count: Some(1),
                max_stored_bytes: Some(String::new()),
                compile_timeout: Some(String::new()),
                max_concurrent_compiles: Some(1),
                max_loaded: Some(1),
            },
            metrics: MetricsSection {
                module_labels: true,
            },
            queues: [(
                "NAME".to_string(),
                QueueSection {
                    weight: Some(1),
                    max_running: Some(1),
                    rate: Some(Rate {
                        count: 1,
                        per_ms: 1000,
                    }),
                    paused: true,
                },
            )]
            .into(),
            webhooks: WebhooksSection {
                allow_private_targets: true,
                timeout: Some(String::new()),
                retry_for: Some(String::new()),
                retry_delay: Some(String::new()),
                disable_after: Some(String::new()),
                max_output_bytes: Some(String::new()),
                keep_deliveries: Some(String::new()),
            },
            events: EventsSection {
                nats: Some(String::new()),
                subject_prefix: Some(String::new()),
                nats_stream: Some(String::new()),
            },
        };
        fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeSet<String>) {
            match v {
                serde_json::Value::Object(fields) => {
                    for (k, v) in fields {
                        walk(&format!("{prefix}{k}."), v, out);
                    }
                }
                serde_json::Value::Array(items)
                    if items.first().is_some_and(serde_json::Value::is_object) =>
                {
                    walk(
                        &format!("{}[].", prefix.trim_end_matches('.')),
                        &items[0],
                        out,
                    );
                }
                _ => {
                    out.insert(prefix.trim_end_matches('.').to_string());
                }
            }
        }
        let mut keys = BTreeSet::new();
        walk(
            "",
            &serde_json::to_value(&full).expect("serialize"),
            &mut keys,
        );
        // `sandbox.target` is `None` by default and so not written: it is a key all the same.
        keys.insert("sandbox.target".to_string());
        keys
    }

    /// The reference table of `docs/serving.md`: its rows' first cells (`` `key` ``) and every
    /// `WASMJOBS_*` name in it.
    fn documented() -> (BTreeSet<String>, BTreeSet<String>) {
        let doc = include_str!("../../docs/serving.md");
        let start = doc
            .find("<!-- reference -->")
            .expect("the reference table's start marker");
        let end = doc
            .find("<!-- /reference -->")
            .expect("the reference table's end marker");
        let mut keys = BTreeSet::new();
        let mut vars = BTreeSet::new();
        for line in doc[start..end].lines().filter(|l| l.starts_with("| `")) {
            let cell = line
                .split('|')
                .nth(1)
                .unwrap_or("")
                .trim()
                .trim_matches('`');
            if !cell.starts_with("WASMJOBS_") {
                keys.insert(cell.to_string());
            }
            for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("WASMJOBS_") {
                    vars.insert(word.to_string());
                }
            }
        }
        (keys, vars)
    }

    #[test]
    fn the_reference_in_serving_md_lists_every_key_and_variable() {
        let (keys, vars) = documented();
        let want = config_keys();
        let missing: Vec<_> = want.difference(&keys).collect();
        let unknown: Vec<_> = keys.difference(&want).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "docs/serving.md's reference: missing {missing:?}, not keys of wasmjobs.toml {unknown:?}"
        );
        // The variables are those of `serve` and `worker` (the node) and the client verbs
        // (global: on the root command).
        use clap::CommandFactory as _;
        let cli = crate::cli::Cli::command();
        let mut env = BTreeSet::new();
        let verbs = ["serve", "worker", "job"].map(|v| cli.find_subcommand(v).expect(v));
        for cmd in std::iter::once(&cli).chain(verbs) {
            for arg in cmd.get_arguments() {
                if let Some(var) = arg.get_env() {
                    env.insert(var.to_string_lossy().into_owned());
                }
            }
        }
        env.insert("WASMJOBS_LOG".to_string());
        let missing: Vec<_> = env.difference(&vars).collect();
        let unknown: Vec<_> = vars.difference(&env).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "docs/serving.md's reference: variables missing {missing:?}, unknown {unknown:?}"
        );
    }
}
