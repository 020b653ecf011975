//! `wasmjobs job …`: submit, follow, list, cancel, retry and replay jobs on a running server;
//! and what the other client commands share (ids, URL encoding).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use wasmjobs_host::Outcome;

use super::client::{Client, ClientArgs, OutputArgs};
use super::output;
use crate::exit;

#[derive(Debug, Args)]
pub struct JobCmd {
    #[command(flatten)]
    out: OutputArgs,
    #[command(subcommand)]
    verb: JobVerb,
}

#[derive(Debug, Subcommand)]
enum JobVerb {
    /// Submit a job.
    Submit(SubmitArgs),
    /// Show a job: state, attempts, output.
    Status {
        /// The job's id.
        id: String,
    },
    /// Show a job's events (logs, progress, state changes); --follow streams them live.
    Logs {
        /// The job's id.
        id: String,
        /// Stream the events until the job ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel a job (a running attempt stops within a second).
    Cancel {
        /// The job's id.
        id: String,
    },
    /// Put a failed or cancelled job back in the queue.
    Retry {
        /// The job's id.
        id: String,
    },
    /// List jobs, newest first.
    List {
        /// Only jobs in this state (scheduled, queued, running, succeeded, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only jobs of this module (name or sha256 digest).
        #[arg(long)]
        module: Option<String>,
        /// Only jobs in this queue.
        #[arg(long)]
        queue: Option<String>,
        /// At most this many jobs.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Where the previous page ended (the cursor it printed).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Fetch a job's module, input, limits and grants and run it again here, in a local sandbox.
    Replay {
        /// The job's id.
        id: String,
    },
}

#[derive(Debug, Args)]
struct SubmitArgs {
    /// Module name or sha256 digest.
    module: String,
    /// The job's input: literal text (usually JSON), `@path` to read a file, `@-` for stdin.
    #[arg(long, short)]
    input: Option<String>,
    /// Fuel (instruction budget) of each attempt, e.g. 1000000000 or 1e9 (default: the
    /// server's).
    #[arg(long, value_parser = super::values::fuel)]
    fuel: Option<u64>,
    /// Memory limit of each attempt, e.g. 64MiB (default: the server's).
    #[arg(long, value_parser = super::values::size)]
    memory: Option<u64>,
    /// Wall-clock timeout of each attempt, e.g. 5s or 250ms (default: the server's).
    #[arg(long, value_parser = super::values::duration)]
    timeout: Option<Duration>,
    /// Attempts at most before the job fails (default: the server's retry policy).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// The queue it waits in (default: `default`).
    #[arg(long)]
    queue: Option<String>,
    /// Higher runs first among its queue's jobs.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i64,
    /// At most --concurrency-limit jobs with this key run at once, on every node (e.g. a
    /// customer's id); the others wait their turn without holding a slot.
    #[arg(long)]
    concurrency_key: Option<String>,
    /// How many jobs of --concurrency-key may run at once (default 1: one at a time, in
    /// order).
    #[arg(long, requires = "concurrency_key")]
    concurrency_limit: Option<u32>,
    /// A key that makes resubmitting safe: the same key and request return the first job.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Wait for the job to end and print its output.
    #[arg(long)]
    wait: bool,
    /// Stream the job's logs and progress until it ends, then print its output.
    #[arg(long, short)]
    follow: bool,
}

pub async fn job(cmd: JobCmd, client: &ClientArgs) -> anyhow::Result<u8> {
    let c = Client::new(client)?;
    let json = cmd.out.json();
    let json_out = json;
    match cmd.verb {
        JobVerb::Submit(a) => submit(&c, a, json_out).await,
        JobVerb::Status { id } => {
            let job = c
                .get(&format!("/v1/jobs/{}", check_id("job", &id)?))
                .await?;
            if json_out {
                println!("{job}");
            } else {
                print_job(&job);
            }
            Ok(0)
        }
        JobVerb::Logs { id, follow } => {
            let id = check_id("job", &id)?;
            if follow {
                let code = follow_job(&c, id, json_out).await?;
                return Ok(code);
            }
            // Without --follow: the history so far (the stream ends at once for finished jobs;
            // for running ones, stop at the first live wait).
            let job = c.get(&format!("/v1/jobs/{id}")).await?;
            if job["state"].as_str().is_some_and(is_final) {
                follow_job(&c, id, json_out).await?;
            } else {
                eprintln!(
                    "job {id} is {}: use --follow to stream its logs live",
                    job["state"].as_str().unwrap_or("?")
                );
            }
            Ok(0)
        }
        JobVerb::Cancel { id } => {
            let v = c
                .post_json(
                    &format!("/v1/jobs/{}/cancel", check_id("job", &id)?),
                    &json!({}),
                )
                .await?;
            println!(
                "{}",
                if json_out {
                    v.to_string()
                } else {
                    v["message"].as_str().unwrap_or("").to_string()
                }
            );
            Ok(0)
        }
        JobVerb::Retry { id } => {
            let v = c
                .post_json(
                    &format!("/v1/jobs/{}/retry", check_id("job", &id)?),
                    &json!({}),
                )
                .await?;
            println!(
                "{}",
                if json_out {
                    v.to_string()
                } else {
                    format!("job {} is {}", v["id"], v["state"].as_str().unwrap_or(""))
                }
            );
            Ok(0)
        }
        JobVerb::List {
            state,
            module,
            queue,
            limit,
            cursor,
        } => {
            let mut q = format!("/v1/jobs?limit={limit}");
            for (k, v) in [
                ("state", state),
                ("module", module),
                ("queue", queue),
                ("cursor", cursor),
            ] {
                if let Some(v) = v {
                    q.push_str(&format!("&{k}={}", urlencode(&v)));
                }
            }
            let v = c.get(&q).await?;
            if json_out {
                println!("{v}");
            } else {
                // Names rather than digests: the modules' names, from one more request.
                let names = module_names(&c).await;
                let rows = v["jobs"].as_array().into_iter().flatten().map(|j| {
                    let digest = j["module"].as_str().unwrap_or("");
                    [
                        j["id"].to_string(),
                        output::text(&j["state"]),
                        output::text(&j["outcome"]),
                        names
                            .get(digest)
                            .cloned()
                            .unwrap_or_else(|| output::short_digest(digest)),
                        j["attempt_count"].to_string(),
                        output::time(&j["created_at"]),
                        output::time(&j["finished_at"]),
                    ]
                });
                print!(
                    "{}",
                    output::table(
                        [
                            "ID",
                            "STATE",
                            "OUTCOME",
                            "MODULE",
                            "ATTEMPTS",
                            "CREATED (UTC)",
                            "FINISHED (UTC)"
                        ],
                        rows
                    )
                );
                if let Some(next) = v["next_cursor"].as_str() {
                    eprintln!("more: --cursor {next}");
                }
            }
            Ok(0)
        }
        JobVerb::Replay { id } => replay(&c, check_id("job", &id)?, json_out).await,
    }
}

async fn submit(c: &Client, a: SubmitArgs, json_out: bool) -> anyhow::Result<u8> {
    let mut body = json!({ "module": a.module, "priority": a.priority });
    super::values::put_input(&mut body, &super::values::read_input(a.input.as_deref())?);
    let mut limits = json!({});
    if let Some(f) = a.fuel {
        limits["fuel"] = json!(f);
    }
    if let Some(m) = a.memory {
        limits["memory_bytes"] = json!(m);
    }
    if let Some(t) = a.timeout {
        limits["timeout_ms"] = json!(u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    }
    if limits.as_object().is_some_and(|o| !o.is_empty()) {
        body["limits"] = limits;
    }
    if let Some(n) = a.max_attempts {
        body["retry"] = json!({ "max_attempts": n });
    }
    if let Some(k) = a.idempotency_key {
        body["idempotency_key"] = json!(k);
    }
    if let Some(q) = a.queue {
        body["queue"] = json!(q);
    }
    if let Some(k) = a.concurrency_key {
        body["concurrency_key"] = json!(k);
    }
    if let Some(n) = a.concurrency_limit {
        body["concurrency_limit"] = json!(n);
    }
    let path = if a.wait && !a.follow {
        "/v1/jobs?wait=300s"
    } else {
        "/v1/jobs"
    };
    let mut job = c.post_json(path, &body).await?;
    let id = job["id"].as_i64().unwrap_or(0);
    if a.follow {
        return follow_job(c, id, json_out).await;
    }
    if a.wait {
        while !job["state"].as_str().is_some_and(is_final) {
            job = c.get(&format!("/v1/jobs/{id}")).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if json_out {
            println!("{job}");
        } else {
            print_output(&job);
            report_end(&job);
        }
        return Ok(exit_code(&job));
    }
    if json_out {
        println!("{job}");
    } else {
        println!("{id}");
    }
    Ok(0)
}

/// Streams a job's events; prints logs and progress on stderr, the output on stdout.
async fn follow_job(c: &Client, id: i64, json_out: bool) -> anyhow::Result<u8> {
    // On a terminal, progress is a bar that log lines print above (drawn from the first
    // progress event on); elsewhere, a line each.
    let bar = (!json_out && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::hidden(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template("[{bar:30}] {pos}/{len}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    });
    let say = |line: String| match &bar {
        Some(bar) if !bar.is_hidden() => bar.println(line),
        _ => eprintln!("{line}"),
    };
    let mut end = Value::Null;
    let mut output = Value::Null;
    c.follow(&format!("/v1/jobs/{id}/events"), |_, event, data| {
        if json_out {
            println!("{}", json!({ "event": event, "data": data }));
        }
        match event {
            "end" => end = data.clone(),
            "output" => output = data.clone(),
            _ if json_out => {}
            "log" => say(format!(
                "[{} {}] {}",
                data["level"].as_str().unwrap_or("info"),
                data["source"].as_str().unwrap_or(""),
                data["message"].as_str().unwrap_or("")
            )),
            "progress" => {
                let (done, total) = (
                    data["done"].as_u64().unwrap_or(0),
                    data["total"].as_u64().unwrap_or(0),
                );
                match &bar {
                    Some(bar) if total > 0 => {
                        if bar.is_hidden() {
                            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                        }
                        bar.set_length(total);
                        bar.set_position(done.min(total));
                    }
                    _ => eprintln!("[progress] {done}/{total}"),
                }
            }
            "state" => say(format!(
                "-- {}{}",
                data["state"].as_str().unwrap_or("?"),
                data["error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )),
            other => say(format!("-- {other}")),
        }
    })
    .await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if !json_out {
        print_output(&output);
    }
    let job = json!({ "state": end["state"], "outcome": end["outcome"] });
    Ok(exit_code(&job))
}

async fn replay(c: &Client, id: i64, json_out: bool) -> anyhow::Result<u8> {
    let job = c.get(&format!("/v1/jobs/{id}?include=input")).await?;
    let digest = job["module"].as_str().context("the job has no module")?;
    let wasm = c.get_bytes(&format!("/v1/modules/{digest}/wasm")).await?;
    let input = base64::engine::general_purpose::STANDARD
        .decode(job["input_base64"].as_str().unwrap_or(""))
        .context("the server sent an invalid input")?;
    let limits: wasmjobs_host::Limits =
        serde_json::from_value(job["limits"].clone()).context("job limits")?;
    let grants: wasmjobs_host::Grants =
        serde_json::from_value(job["grants"].clone()).context("job grants")?;
    let hidden: Vec<&str> = grants
        .env
        .iter()
        .filter(|(_, v)| v.as_str() == "<redacted>")
        .map(|(k, _)| k.as_str())
        .collect();
    if !hidden.is_empty() {
        eprintln!(
            "note: only an admin token sees grant values; {} replayed as \"<redacted>\"",
            hidden.join(", ")
        );
    }
    let last = job["attempts"]
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .unwrap_or(Value::Null);
    let sandbox = super::local_sandbox()?;
    let module = sandbox.load(&wasm).context("loading the job's module")?;
    let report = sandbox
        .run(
            &module,
            wasmjobs_host::RunRequest::new(input)
                .limits(limits)
                .grants(grants),
        )
        .await;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for l in &report.logs {
            eprintln!("[{} {}] {}", l.level.as_str(), l.source, l.message);
        }
        std::io::stdout().write_all(&report.output)?;
        let recorded = last["outcome"].as_str().unwrap_or("none");
        let now = report.outcome.as_str();
        let verdict = if recorded == now {
            "reproduced"
        } else {
            "did not reproduce"
        };
        eprintln!(
            "replay of job {id} attempt {}: {verdict} — recorded {recorded}, now {now}{}",
            last["attempt"],
            report
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
    Ok(exit::for_outcome(report.outcome))
}

/// Each module digest's names (`wordfreq, wf`), for lists that show jobs by module; empty
/// when the modules cannot be read (the list then shows digests).
async fn module_names(c: &Client) -> std::collections::HashMap<String, String> {
    let Ok(v) = c.get("/v1/modules").await else {
        return Default::default();
    };
    v["modules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["digest"].as_str()?.to_string(), output::module_names(m)?)))
        .collect()
}

/// An id given on the command line: a positive integer, or an error naming `what`.
pub(super) fn check_id(what: &str, id: &str) -> anyhow::Result<i64> {
    match id.parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("invalid {what} id {id:?}: expected a positive integer"),
    }
}

fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

/// The exit code for a finished job, as `wasmjobs run` would give for its last outcome.
fn exit_code(job: &Value) -> u8 {
    match (
        job["state"].as_str(),
        job["outcome"]
            .as_str()
            .and_then(|o| o.parse::<Outcome>().ok()),
    ) {
        (Some("succeeded"), _) => 0,
        (Some("cancelled"), _) => exit::for_outcome(Outcome::Cancelled),
        (_, Some(o)) => exit::for_outcome(o),
        (Some("failed"), None) => 1,
        _ => exit::ERROR,
    }
}

fn print_output(job: &Value) {
    if let Some(v) = job.get("output").filter(|v| !v.is_null()) {
        println!("{v}");
    } else if let Some(t) = job["output_text"].as_str() {
        print!("{t}");
    } else if let Some(bytes) = job["output_base64"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
    {
        let _ = std::io::stdout().write_all(&bytes);
    }
}

fn report_end(job: &Value) {
    if job["state"] != "succeeded" {
        eprintln!(
            "job {} {}: {}",
            job["id"],
            job["outcome"]
                .as_str()
                .or(job["state"].as_str())
                .unwrap_or("?"),
            job["error"].as_str().unwrap_or("no message")
        );
    }
}

fn print_job(job: &Value) {
    println!(
        "job {}  {}  module {}",
        job["id"],
        job["state"].as_str().unwrap_or("?"),
        job["module"].as_str().unwrap_or("")
    );
    if let Some(key) = job["concurrency_key"].as_str() {
        println!(
            "concurrency key {key:?} (limit {}){}",
            job["concurrency_limit"],
            if job["waiting_for_key"] == true {
                ": waiting for a place"
            } else {
                ""
            }
        );
    }
    if let Some(e) = job["error"].as_str() {
        println!("error: {e}");
    }
    for a in job["attempts"].as_array().into_iter().flatten() {
        println!(
            "  attempt {}  {:<16} fuel {:>12}  {:>8} µs  on {}{}",
            a["attempt"],
            a["outcome"].as_str().unwrap_or("running"),
            a["fuel_consumed"]
                .as_u64()
                .map(|f| f.to_string())
                .unwrap_or("-".into()),
            a["wall_time_us"]
                .as_u64()
                .map(|f| f.to_string())
                .unwrap_or("-".into()),
            a["worker"].as_str().unwrap_or(""),
            a["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
    print_output(job);
}

pub(super) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
