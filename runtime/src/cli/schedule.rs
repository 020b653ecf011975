//! `wasmjobs schedule …`: add, list and delete cron schedules on a running server.

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
        /// When to submit: a cron expression of five fields (minute hour day month weekday),
        /// in UTC.
        cron: String,
        /// The module name or sha256 digest each tick submits.
        module: String,
        /// Each job's input: JSON text, `@FILE`, or `@-` for stdin.
        #[arg(long, short)]
        input: Option<String>,
        /// A name to refer to the schedule by (besides its id).
        #[arg(long)]
        name: Option<String>,
    },
    /// List the schedules, with their next tick.
    List,
    /// Delete a schedule by id or name.
    Rm {
        /// The schedule's id or name.
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
            super::values::put_input(&mut job, &super::values::read_input(input.as_deref())?);
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
