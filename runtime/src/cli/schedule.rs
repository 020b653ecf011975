//! `wasmjobs schedule …`: add, list and delete cron schedules on a running server.

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::client::{Client, ClientArgs};
use super::remote::urlencode;

#[derive(Debug, Args)]
pub struct ScheduleCmd {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    verb: ScheduleVerb,
}

#[derive(Debug, Subcommand)]
enum ScheduleVerb {
    /// Submit MODULE on every tick of CRON (e.g. "*/5 * * * *", UTC).
    Add {
        cron: String,
        module: String,
        #[arg(long, short)]
        input: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    List,
    /// Delete a schedule by id or name.
    Rm {
        key: String,
    },
}

pub async fn schedule(cmd: ScheduleCmd) -> anyhow::Result<u8> {
    let c = Client::new(&cmd.client)?;
    match cmd.verb {
        ScheduleVerb::Add {
            cron,
            module,
            input,
            name,
        } => {
            let mut job = json!({ "module": module });
            if let Some(text) = input {
                job["input"] = serde_json::from_str(&text)
                    .with_context(|| format!("--input is not JSON: {text:?}"))?;
            }
            let v = c
                .post_json(
                    "/v1/schedules",
                    &json!({ "cron": cron, "job": job, "name": name }),
                )
                .await?;
            println!(
                "{}",
                if cmd.client.json {
                    v.to_string()
                } else {
                    v["id"].to_string()
                }
            );
        }
        ScheduleVerb::List => {
            let v = c.get("/v1/schedules").await?;
            if cmd.client.json {
                println!("{v}");
            } else {
                for s in v["schedules"].as_array().into_iter().flatten() {
                    println!(
                        "{:>5}  {:<16} {:<20} {}",
                        s["id"],
                        s["name"].as_str().unwrap_or("-"),
                        s["cron"].as_str().unwrap_or(""),
                        s["target"]["module"].as_str().unwrap_or("")
                    );
                }
            }
        }
        ScheduleVerb::Rm { key } => {
            c.delete(&format!("/v1/schedules/{}", urlencode(&key)))
                .await?;
        }
    }
    Ok(0)
}
