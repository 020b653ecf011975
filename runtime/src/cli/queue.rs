//! `wasmjobs queue …`: list, pause and resume the queues of a running server.

use clap::{Args, Subcommand};

use super::client::{Client, ClientArgs, OutputArgs};
use super::output;
use super::remote::urlencode;

#[derive(Debug, Args)]
pub struct QueueCmd {
    #[command(flatten)]
    out: OutputArgs,
    #[command(subcommand)]
    verb: QueueVerb,
}

#[derive(Debug, Subcommand)]
enum QueueVerb {
    /// List the queues: jobs queued, scheduled and running, weight, limits, paused.
    List,
    /// Pause a queue: nothing more starts from it on any node (running jobs go on).
    Pause {
        /// The queue's name.
        name: String,
    },
    /// Resume a paused queue.
    Resume {
        /// The queue's name.
        name: String,
    },
}

pub async fn queue(cmd: QueueCmd, client: &ClientArgs) -> anyhow::Result<u8> {
    let c = Client::new(client)?;
    let json = cmd.out.json();
    let verb = match cmd.verb {
        QueueVerb::List => {
            let v = c.get("/v1/queues").await?;
            if json {
                println!("{v}");
            } else {
                let rows = v["queues"].as_array().into_iter().flatten().map(row);
                print!("{}", output::table(HEADER, rows));
            }
            return Ok(0);
        }
        QueueVerb::Pause { name } => ("pause", name),
        QueueVerb::Resume { name } => ("resume", name),
    };
    let (action, name) = verb;
    let v = c
        .post_json(
            &format!("/v1/queues/{}/{action}", urlencode(&name)),
            &serde_json::json!({}),
        )
        .await?;
    if json {
        println!("{v}");
    } else {
        print!("{}", output::table(HEADER, [row(&v)]));
    }
    Ok(0)
}

const HEADER: [&str; 8] = [
    "QUEUE",
    "QUEUED",
    "SCHEDULED",
    "RUNNING",
    "WEIGHT",
    "MAX RUNNING",
    "RATE",
    "PAUSED",
];

fn row(q: &serde_json::Value) -> [String; 8] {
    let or_dash = |v: &serde_json::Value| {
        if v.is_null() {
            "-".to_string()
        } else {
            output::text(v)
        }
    };
    [
        output::text(&q["name"]),
        q["queued"].to_string(),
        q["scheduled"].to_string(),
        q["running"].to_string(),
        q["weight"].to_string(),
        or_dash(&q["max_running"]),
        or_dash(&q["rate"]),
        if q["paused"].as_bool() == Some(true) {
            "yes".into()
        } else {
            "no".into()
        },
    ]
}
