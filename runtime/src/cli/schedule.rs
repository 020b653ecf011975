//! `wasmjobs schedule …`: add, list and delete cron schedules on a running server.

use clap::{Args, Subcommand};
use serde_json::json;

use super::client::{Client, ClientArgs, OutputArgs};
use super::output;
use super::remote::urlencode;

#[derive(Debug, Args)]
pub struct ScheduleCmd {
    #[command(flatten)]
    out: OutputArgs,
    #[command(subcommand)]
    verb: ScheduleVerb,
}

#[derive(Debug, Subcommand)]
enum ScheduleVerb {
    /// Submit MODULE (or start a run of --workflow) on every tick of CRON (e.g.
    /// "*/5 * * * *"; UTC unless --tz).
    Add {
        /// When to submit: a cron expression of five fields (minute hour day month weekday),
        /// in UTC or the --tz zone.
        cron: String,
        /// The module name or sha256 digest each tick submits.
        #[arg(required_unless_present = "workflow", conflicts_with = "workflow")]
        module: Option<String>,
        /// Start a run of this workflow each tick instead of submitting a job.
        #[arg(long)]
        workflow: Option<String>,
        /// The workflow version each tick runs (default: its latest at each tick).
        #[arg(long, requires = "workflow")]
        workflow_version: Option<i64>,
        /// Each job's (or run's) input: JSON text, `@FILE`, or `@-` for stdin.
        #[arg(long, short)]
        input: Option<String>,
        /// A name to refer to the schedule by (besides its id).
        #[arg(long)]
        name: Option<String>,
        /// Read CRON in this IANA time zone (e.g. Europe/Berlin), daylight saving included;
        /// UTC by default.
        #[arg(long)]
        tz: Option<String>,
        /// While the previous tick's job (or run) has not ended: allow (fire anyway, the
        /// default), skip (fire nothing), or queue_one (fire the latest tick once it ended).
        #[arg(long, value_parser = ["allow", "skip", "queue_one"])]
        overlap: Option<String>,
    },
    /// List the schedules, with their next tick.
    List,
    /// Delete a schedule by id or name.
    Rm {
        /// The schedule's id or name.
        key: String,
    },
}

pub async fn schedule(cmd: ScheduleCmd, client: &ClientArgs) -> anyhow::Result<u8> {
    let c = Client::new(client)?;
    let json = cmd.out.json();
    match cmd.verb {
        ScheduleVerb::Add {
            cron,
            module,
            workflow,
            workflow_version,
            input,
            name,
            tz,
            overlap,
        } => {
            let input = super::values::read_input(input.as_deref())?;
            let mut body = json!({ "cron": cron, "tz": tz, "overlap": overlap.as_deref().unwrap_or("allow"), "name": name });
            match (workflow, module) {
                (Some(workflow), _) => {
                    let mut target = json!({ "name": workflow, "version": workflow_version });
                    if !input.is_empty() {
                        let value: serde_json::Value = serde_json::from_slice(&input)
                            .map_err(|e| anyhow::anyhow!("--input: a run's input is JSON: {e}"))?;
                        target["input"] = value;
                    }
                    body["workflow"] = target;
                }
                (None, module) => {
                    let mut job = json!({ "module": module });
                    super::values::put_input(&mut job, &input);
                    body["job"] = job;
                }
            }
            let v = c.post_json("/v1/schedules", &body).await?;
            println!(
                "{}",
                if json {
                    v.to_string()
                } else {
                    v["id"].to_string()
                }
            );
        }
        ScheduleVerb::List => {
            let v = c.get("/v1/schedules").await?;
            if json {
                println!("{v}");
            } else {
                let rows = v["schedules"].as_array().into_iter().flatten().map(|s| {
                    [
                        s["id"].to_string(),
                        output::text(&s["name"]),
                        output::text(&s["cron"]),
                        if s["tz"].is_null() {
                            "UTC".to_string()
                        } else {
                            output::text(&s["tz"])
                        },
                        match s["target"].get("workflow") {
                            Some(w) => format!("workflow {}", output::text(&w["name"])),
                            None => output::text(&s["target"]["module"]),
                        },
                        output::time(&s["next_run_at"]),
                    ]
                });
                print!(
                    "{}",
                    output::table(["ID", "NAME", "CRON", "TZ", "TARGET", "NEXT (UTC)"], rows)
                );
            }
        }
        ScheduleVerb::Rm { key } => {
            c.delete(&format!("/v1/schedules/{}", urlencode(&key)))
                .await?;
        }
    }
    Ok(0)
}
