//! `wasmjobs module …`: upload and list modules on a running server.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::client::{Client, ClientArgs, OutputArgs};
use super::output;
use super::remote::urlencode;

#[derive(Debug, Args)]
pub struct ModuleCmd {
    #[command(flatten)]
    out: OutputArgs,
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

pub async fn module(cmd: ModuleCmd, client: &ClientArgs) -> anyhow::Result<u8> {
    let c = Client::new(client)?;
    let json = cmd.out.json();
    match cmd.verb {
        ModuleVerb::Upload { file, name } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let path = match &name {
                Some(n) => format!("/v1/modules?name={}", urlencode(n)),
                None => "/v1/modules".to_string(),
            };
            let m = c.post_bytes(&path, bytes).await?;
            if json {
                println!("{m}");
            } else {
                println!("{}", m["digest"].as_str().unwrap_or(""));
            }
        }
        ModuleVerb::List => {
            let v = c.get("/v1/modules").await?;
            if json {
                println!("{v}");
            } else {
                let rows = v["modules"].as_array().into_iter().flatten().map(|m| {
                    [
                        output::module_names(m).unwrap_or_else(|| "-".to_string()),
                        output::short_digest(m["digest"].as_str().unwrap_or("")),
                        m["size"]
                            .as_u64()
                            .map_or_else(|| "-".into(), wasmjobs_host::units::format_size),
                        output::time(&m["created_at"]),
                    ]
                });
                print!(
                    "{}",
                    output::table(["NAME", "DIGEST", "SIZE", "CREATED (UTC)"], rows)
                );
            }
        }
    }
    Ok(0)
}
