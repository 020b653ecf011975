//! The HTTP client behind `wasmjobs module|job|schedule`: requests, one-line errors, and a small
//! Server-Sent Events reader for `--follow`.

use anyhow::{Context, anyhow, bail};
use clap::Args;
use futures::StreamExt;
use serde_json::Value;

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The wasmjobs server (client verbs).
    #[arg(
        long,
        env = "WASMJOBS_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// API token, sent as a bearer token (client verbs).
    #[arg(long, env = "WASMJOBS_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Also trust the CA certificates in this PEM file for an https:// server, beside the
    /// system's roots (client verbs).
    #[arg(long, env = "WASMJOBS_CA_CERT", global = true, value_name = "FILE")]
    pub ca_cert: Option<std::path::PathBuf>,
}

/// How a verb prints: `--output table|json` (`-o`), global within the verb, so accepted
/// anywhere after it. Given before the verb, it lands in [`Cli`](super::Cli)'s own `--output`,
/// which [`OutputArgs::json`] falls back to.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output: `table` for people, `json` for scripts (its fields are stable) [default: table].
    #[arg(long, short = 'o', global = true, value_enum)]
    pub output: Option<Output>,
    /// The same as `--output json`.
    #[arg(long, global = true, hide = true)]
    pub json: bool,
}

/// What the verbs print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// `--output` given before the verb (`wasmjobs -o json job list`), set once by `cli::main`.
pub(super) static OUTPUT_BEFORE_VERB: std::sync::OnceLock<Output> = std::sync::OnceLock::new();

impl OutputArgs {
    /// Whether to print JSON: `--output json` or `--json` after the verb, else `--output json`
    /// before it.
    pub fn json(&self) -> bool {
        self.json || self.output.or(OUTPUT_BEFORE_VERB.get().copied()) == Some(Output::Json)
    }
}

/// A request to the server that did not succeed; its exit code tells scripts which way.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// No answer: see [`Client::unreachable`].
    #[error("{0}")]
    Unreachable(String),
    /// An answer that is not a success.
    #[error("{message} (HTTP {status})")]
    Answered { status: u16, message: String },
}

impl RemoteError {
    /// The process's exit code for this failure (docs/cli.md).
    pub fn exit_code(&self) -> u8 {
        match self {
            RemoteError::Unreachable(_) => crate::exit::UNREACHABLE,
            RemoteError::Answered { status, .. } => crate::exit::for_http_status(*status),
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        let base = args.server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!(
                "invalid --server {:?}: expected http://host:port or https://host:port",
                args.server
            );
        }
        let mut http = reqwest::Client::builder();
        if let Some(path) = &args.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read --ca-cert {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|certs| !certs.is_empty())
                .ok_or_else(|| {
                    anyhow!(
                        "--ca-cert {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                        path.display()
                    )
                })?;
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        Ok(Client {
            http: http.build().context("cannot set up the HTTP client")?,
            base,
            token: args.token.clone(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = r.send().await.map_err(|e| self.unreachable(&e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let message = body["detail"].as_str().unwrap_or("no message").to_string();
        Err(RemoteError::Answered { status, message }.into())
    }

    /// What a request that got no answer says: a TLS failure with its reason (and what to do
    /// about a server whose certificate the system does not trust), else that the server
    /// cannot be reached.
    fn unreachable(&self, e: &reqwest::Error) -> RemoteError {
        let tls = tls_error(e).map(ToString::to_string);
        let mut cause: &dyn std::error::Error = e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        RemoteError::Unreachable(if let Some(reason) = tls {
            format!(
                "TLS with the wasmjobs server at {} failed: {reason} (for a certificate signed by your own CA, pass --ca-cert FILE or set WASMJOBS_CA_CERT)",
                self.base
            )
        } else if e.is_connect() {
            format!(
                "cannot reach the wasmjobs server at {} ({cause}): is it running? (wasmjobs serve)",
                self.base
            )
        } else {
            format!("request to {} failed: {cause}", self.base)
        })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self.send(self.request(reqwest::Method::GET, path)).await?;
        resp.json().await.context("the server sent invalid JSON")
    }

    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let resp = self.send(self.request(reqwest::Method::GET, path)).await?;
        Ok(resp.bytes().await.context("reading the response")?.to_vec())
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self
            .send(self.request(reqwest::Method::POST, path).json(body))
            .await?;
        resp.json().await.context("the server sent invalid JSON")
    }

    pub async fn patch_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self
            .send(self.request(reqwest::Method::PATCH, path).json(body))
            .await?;
        resp.json().await.context("the server sent invalid JSON")
    }

    pub async fn post_bytes(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Value> {
        self.post_body(path, body, "application/wasm").await
    }

    /// POSTs `body` as `content_type`; the answer is JSON.
    pub async fn post_body(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> anyhow::Result<Value> {
        let r = self
            .request(reqwest::Method::POST, path)
            .header("content-type", content_type)
            .body(body);
        let resp = self.send(r).await?;
        resp.json().await.context("the server sent invalid JSON")
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.send(self.request(reqwest::Method::DELETE, path))
            .await?;
        Ok(())
    }

    /// Follows an SSE stream, calling `on_event(id, event, data)` for each event until the
    /// stream ends. Reconnects with `Last-Event-ID` if the connection drops.
    pub async fn follow(
        &self,
        path: &str,
        mut on_event: impl FnMut(&str, &str, &Value),
    ) -> anyhow::Result<()> {
        let mut last_id: Option<String> = None;
        let mut retries = 0;
        loop {
            let mut r = self
                .request(reqwest::Method::GET, path)
                .header("accept", "text/event-stream");
            if let Some(id) = &last_id {
                r = r.header("last-event-id", id);
            }
            let resp = self.send(r).await?;
            let mut stream = resp.bytes_stream();
            let mut buf = String::new();
            let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
            let mut ended = false;
            while let Some(chunk) = stream.next().await {
                let Ok(chunk) = chunk else { break };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(pos) = buf.find('\n') {
                    let line = buf[..pos].trim_end_matches('\r').to_string();
                    buf.drain(..=pos);
                    if line.is_empty() {
                        if !event.is_empty() || !data.is_empty() {
                            let value: Value =
                                serde_json::from_str(&data).unwrap_or(Value::String(data.clone()));
                            on_event(&id, &event, &value);
                            if !id.is_empty() {
                                last_id = Some(id.clone());
                            }
                            ended |= event == "end";
                        }
                        (id, event, data) = (String::new(), String::new(), String::new());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !data.is_empty() {
                            data.push('\n');
                        }
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
            }
            if ended {
                return Ok(());
            }
            retries += 1;
            if retries > 10 {
                bail!(
                    "lost the event stream from {} and could not reconnect",
                    self.base
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(200 * retries)).await;
        }
    }
}

/// The TLS error somewhere in `e`'s chain, looking inside the I/O errors that wrap it (an
/// `io::Error` gives its inner error's source, not the inner error, as its own source).
fn tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        return tls_error(inner);
    }
    e.source().and_then(tls_error)
}
