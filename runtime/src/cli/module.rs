//! `wasmjobs module …`: upload and list modules on a running server.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;

use super::client::{Client, ClientArgs};
use super::remote::urlencode;

#[derive(Debug, Args)]
pub struct ModuleCmd {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    verb: ModuleVerb,
}

#[derive(Debug, Subcommand)]
enum ModuleVerb {
    /// Upload a component; prints its digest.
    Upload {
        /// The component (`.wasm`); the server compiles it.
        file: PathBuf,
        /// Name to point at this module (moves the name if it pointed elsewhere).
        #[arg(long)]
        name: Option<String>,
    },
    /// List uploaded modules.
    List,
}

pub async fn module(cmd: ModuleCmd) -> anyhow::Result<u8> {
    let c = Client::new(&cmd.client)?;
    match cmd.verb {
        ModuleVerb::Upload { file, name } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let path = match &name {
                Some(n) => format!("/v1/modules?name={}", urlencode(n)),
                None => "/v1/modules".to_string(),
            };
            let m = c.post_bytes(&path, bytes).await?;
            if cmd.client.json {
                println!("{m}");
            } else {
                println!("{}", m["digest"].as_str().unwrap_or(""));
            }
        }
        ModuleVerb::List => {
            let v = c.get("/v1/modules").await?;
            if cmd.client.json {
                println!("{v}");
            } else {
                for m in v["modules"].as_array().into_iter().flatten() {
                    let names: Vec<&str> = m["names"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    println!(
                        "{}  {:>9}  {}  {}",
                        m["digest"].as_str().unwrap_or(""),
                        m["size"],
                        m["world"].as_str().unwrap_or(""),
                        names.join(",")
                    );
                }
            }
        }
    }
    Ok(0)
}
