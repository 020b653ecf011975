//! The HTTP client behind `wasmjobs module|job|schedule`: requests, one-line errors, and a small
//! Server-Sent Events reader for `--follow`.

use anyhow::{Context, anyhow, bail};
use clap::Args;
use futures::StreamExt;
use serde_json::Value;

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The wasmjobs server.
    #[arg(
        long,
        env = "WASMJOBS_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// API token (sent as a bearer token).
    #[arg(long, env = "WASMJOBS_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
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
                "invalid --server {:?}: expected http://host:port",
                args.server
            );
        }
        Ok(Client {
            http: reqwest::Client::new(),
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
        let resp = r.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!(
                    "cannot reach the wasmjobs server at {}: is it running? (wasmjobs serve)",
                    self.base
                )
            } else {
                anyhow!("request to {} failed: {e}", self.base)
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let message = body["error"]["message"].as_str().unwrap_or("no message");
        bail!("{message} (HTTP {})", status.as_u16())
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
