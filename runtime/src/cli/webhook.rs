//! `wasmjobs webhook …`: add, list, enable, disable and remove the webhooks of a running
//! server, list a webhook's deliveries and redeliver one (docs/events.md).

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::{Client, ClientArgs, OutputArgs};
use super::output;
use super::remote::urlencode;

#[derive(Debug, Args)]
pub struct WebhookCmd {
    #[command(flatten)]
    out: OutputArgs,
    #[command(subcommand)]
    verb: WebhookVerb,
}

#[derive(Debug, Subcommand)]
enum WebhookVerb {
    /// Add a webhook; prints its signing secret, which is shown only this once.
    Add {
        /// Where the events are sent (http or https).
        url: String,
        /// Event types, comma-separated: job.succeeded, job.failed, job.cancelled, job.*,
        /// run.succeeded, run.failed, run.*, …
        #[arg(long, value_delimiter = ',', required = true)]
        events: Vec<String>,
        /// Only jobs of this module (a name or a sha256: digest).
        #[arg(long)]
        module: Option<String>,
        /// Only jobs and runs of this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// Only jobs of this queue.
        #[arg(long)]
        queue: Option<String>,
        /// What it is for, shown in lists.
        #[arg(long)]
        description: Option<String>,
        /// Put each job's output in its payloads (up to the server's cap).
        #[arg(long)]
        include_output: bool,
    },
    /// List the webhooks.
    List,
    /// Enable a webhook (one disabled for failing starts afresh).
    Enable {
        /// The webhook's id.
        id: i64,
    },
    /// Disable a webhook: its events are no longer delivered until it is enabled.
    Disable {
        /// The webhook's id.
        id: i64,
    },
    /// Remove a webhook and its deliveries.
    Rm {
        /// The webhook's id.
        id: i64,
    },
    /// A webhook's deliveries, newest first, with their last call.
    Deliveries {
        /// The webhook's id.
        id: i64,
        /// Only those in this state: pending, delivered or dead.
        #[arg(long)]
        state: Option<String>,
        /// How many (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Send a delivery again (a dead one, say), with the same event id.
    Redeliver {
        /// The webhook's id.
        id: i64,
        /// The delivery's id.
        delivery: i64,
    },
}

pub async fn webhook(cmd: WebhookCmd, client: &ClientArgs) -> anyhow::Result<u8> {
    let c = Client::new(client)?;
    let json = cmd.out.json();
    match cmd.verb {
        WebhookVerb::Add {
            url,
            events,
            module,
            workflow,
            queue,
            description,
            include_output,
        } => {
            let v = c
                .post_json(
                    "/v1/webhooks",
                    &json!({
                        "url": url, "events": events, "module": module, "workflow": workflow,
                        "queue": queue, "description": description,
                        "include_output": include_output,
                    }),
                )
                .await?;
            if json {
                println!("{v}");
            } else {
                print!("{}", output::table(HEADER, [row(&v)]));
                println!(
                    "signing secret (shown only now; verify each call's webhook-signature with it):\n{}",
                    output::text(&v["secret"])
                );
            }
        }
        WebhookVerb::List => {
            let v = c.get("/v1/webhooks").await?;
            if json {
                println!("{v}");
            } else {
                let rows = v["webhooks"].as_array().into_iter().flatten().map(row);
                print!("{}", output::table(HEADER, rows));
            }
        }
        WebhookVerb::Enable { id } => enable(&c, id, true, json).await?,
        WebhookVerb::Disable { id } => enable(&c, id, false, json).await?,
        WebhookVerb::Rm { id } => {
            c.delete(&format!("/v1/webhooks/{id}")).await?;
            if json {
                println!("{}", json!({"deleted": id}));
            } else {
                println!("webhook {id} removed");
            }
        }
        WebhookVerb::Deliveries { id, state, limit } => {
            let mut path = format!("/v1/webhooks/{id}/deliveries?limit={limit}");
            if let Some(s) = state {
                path.push_str(&format!("&state={}", urlencode(&s)));
            }
            let v = c.get(&path).await?;
            if json {
                println!("{v}");
            } else {
                let rows = v["deliveries"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(delivery_row);
                print!("{}", output::table(DELIVERY_HEADER, rows));
            }
        }
        WebhookVerb::Redeliver { id, delivery } => {
            let v = c
                .post_json(
                    &format!("/v1/webhooks/{id}/deliveries/{delivery}/redeliver"),
                    &json!({}),
                )
                .await?;
            if json {
                println!("{v}");
            } else {
                print!("{}", output::table(DELIVERY_HEADER, [delivery_row(&v)]));
            }
        }
    }
    Ok(0)
}

async fn enable(c: &Client, id: i64, enabled: bool, json: bool) -> anyhow::Result<()> {
    let v = c
        .patch_json(&format!("/v1/webhooks/{id}"), &json!({"enabled": enabled}))
        .await?;
    if json {
        println!("{v}");
    } else {
        print!("{}", output::table(HEADER, [row(&v)]));
    }
    Ok(())
}

const HEADER: [&str; 5] = ["ID", "URL", "EVENTS", "ENABLED", "DESCRIPTION"];

fn row(w: &Value) -> [String; 5] {
    let events: Vec<String> = w["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(output::text)
        .collect();
    let enabled = match (w["enabled"].as_bool(), w["disabled_reason"].as_str()) {
        (Some(true), _) => "yes".to_string(),
        (_, Some(why)) => format!("no: {why}"),
        _ => "no".to_string(),
    };
    [
        w["id"].to_string(),
        output::text(&w["url"]),
        events.join(","),
        enabled,
        if w["description"].is_null() {
            "-".into()
        } else {
            output::text(&w["description"])
        },
    ]
}

const DELIVERY_HEADER: [&str; 7] = ["ID", "EVENT", "TYPE", "STATE", "CALLS", "LAST CALL", "NEXT"];

fn delivery_row(d: &Value) -> [String; 7] {
    let last = d["calls"].as_array().and_then(|c| c.last());
    let last = match last {
        None => "-".to_string(),
        Some(c) => {
            let status = if c["status"].is_null() {
                "no response".to_string()
            } else {
                format!("HTTP {}", c["status"])
            };
            match c["error"].as_str() {
                Some(e) if !c["status"].is_null() => {
                    format!("{status} in {} ms: {e}", c["latency_ms"])
                }
                Some(e) => format!("{e} ({} ms)", c["latency_ms"]),
                None => format!("{status} in {} ms", c["latency_ms"]),
            }
        }
    };
    [
        d["id"].to_string(),
        output::text(&d["event_id"]),
        output::text(&d["event_type"]),
        output::text(&d["state"]),
        d["attempts"].to_string(),
        last,
        if d["next_at"].is_null() {
            "-".into()
        } else {
            output::time(&d["next_at"])
        },
    ]
}
