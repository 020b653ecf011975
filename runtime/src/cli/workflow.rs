//! `wasmjobs workflow …`: workflow definitions on a server (runs come with issue 5).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::client::{Client, ClientArgs};

#[derive(Debug, Args)]
pub struct WorkflowCmd {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    verb: WorkflowVerb,
}

#[derive(Debug, Subcommand)]
enum WorkflowVerb {
    /// Create a workflow, or a new version of it, from a JSON or YAML definition file.
    Create { file: PathBuf },
    /// The latest version of every workflow.
    List,
    /// One workflow's definition: NAME (the latest version) or NAME@VERSION.
    Show { name: String },
    /// The workflow's graph as Mermaid (or DOT with `--dot`): NAME or NAME@VERSION.
    Graph {
        name: String,
        #[arg(long)]
        dot: bool,
    },
}

pub async fn workflow(cmd: WorkflowCmd) -> anyhow::Result<u8> {
    let c = Client::new(&cmd.client)?;
    // NAME@VERSION: the path segment and the `version=` query, if any.
    let split = |name: &str| -> (String, Option<String>) {
        match name.split_once('@') {
            Some((n, v)) => (
                super::remote::urlencode(n),
                Some(format!("version={}", super::remote::urlencode(v))),
            ),
            None => (super::remote::urlencode(name), None),
        }
    };
    match cmd.verb {
        WorkflowVerb::Create { file } => {
            let text =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let content_type = if text.trim_ascii_start().starts_with(b"{") {
                "application/json"
            } else {
                "application/yaml"
            };
            let w = c.post_body("/v1/workflows", text, content_type).await?;
            if cmd.client.json {
                println!("{w}");
            } else {
                println!(
                    "{} version {}",
                    w["name"].as_str().unwrap_or(""),
                    w["version"]
                );
            }
        }
        WorkflowVerb::List => {
            let v = c.get("/v1/workflows").await?;
            if cmd.client.json {
                println!("{v}");
            } else {
                for w in v["workflows"].as_array().into_iter().flatten() {
                    let nodes = w["definition"]["nodes"].as_array().map_or(0, Vec::len);
                    println!(
                        "{:<24} v{:<4} {nodes} nodes",
                        w["name"].as_str().unwrap_or(""),
                        w["version"]
                    );
                }
            }
        }
        WorkflowVerb::Show { name } => {
            let (name, version) = split(&name);
            let query = version.map(|q| format!("?{q}")).unwrap_or_default();
            let w = c.get(&format!("/v1/workflows/{name}{query}")).await?;
            if cmd.client.json {
                println!("{w}");
            } else {
                println!("{}", serde_json::to_string_pretty(&w["definition"])?);
            }
        }
        WorkflowVerb::Graph { name, dot } => {
            let (name, version) = split(&name);
            let mut query = vec![format!("format={}", if dot { "dot" } else { "mermaid" })];
            query.extend(version);
            let text = c
                .get_bytes(&format!("/v1/workflows/{name}/graph?{}", query.join("&")))
                .await?;
            print!("{}", String::from_utf8_lossy(&text));
        }
    }
    Ok(0)
}
