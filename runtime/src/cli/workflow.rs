//! `wasmjobs workflow …`: workflow definitions and runs on a server.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::{Client, ClientArgs, OutputArgs};
use super::output;

#[derive(Debug, Args)]
pub struct WorkflowCmd {
    #[command(flatten)]
    out: OutputArgs,
    #[command(subcommand)]
    verb: WorkflowVerb,
}

#[derive(Debug, Subcommand)]
enum WorkflowVerb {
    /// Create a workflow, or a new version of it, from a JSON or YAML definition file.
    Create {
        /// The definition: a `.json`, `.yaml` or `.yml` file.
        file: PathBuf,
    },
    /// The latest version of every workflow.
    List,
    /// One workflow's definition: NAME (the latest version) or NAME@VERSION.
    Show {
        /// NAME or NAME@VERSION.
        name: String,
    },
    /// The workflow's graph as Mermaid (or DOT with `--dot`): NAME or NAME@VERSION.
    Graph {
        /// NAME or NAME@VERSION.
        name: String,
        /// Graphviz DOT instead of Mermaid.
        #[arg(long)]
        dot: bool,
    },
    /// Start a run of NAME (its latest version) or NAME@VERSION; prints the run id, or with
    /// `--follow` a live tree of its nodes, then the run's output.
    Run {
        /// NAME or NAME@VERSION.
        name: String,
        /// The run's input: JSON text, `@FILE`, or `@-` for stdin.
        #[arg(long)]
        input: Option<String>,
        /// Follow the run until it ends; exit 0 if it succeeded, 1 if it failed, 15 if cancelled.
        #[arg(long, short)]
        follow: bool,
    },
    /// A run's state and every node's.
    Status {
        /// The run's id.
        id: String,
        /// Follow the run until it ends (as `run --follow`).
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel a run: its pending nodes are cancelled and its running jobs stopped.
    Cancel {
        /// The run's id.
        id: String,
    },
    /// Retry a failed or cancelled run from where it failed: succeeded nodes keep their
    /// outputs; failed, cancelled and skipped nodes (and a for_each node's failed elements)
    /// run again.
    Retry {
        /// The run's id.
        id: String,
        /// A new input for a node run again from its start: NODE=JSON, NODE=@FILE or
        /// NODE=@- (stdin); may be repeated.
        #[arg(long, short, value_name = "NODE=INPUT")]
        input: Vec<String>,
        /// Follow the run until it ends (as `run --follow`).
        #[arg(long, short)]
        follow: bool,
    },
}

pub async fn workflow(cmd: WorkflowCmd, client: &ClientArgs) -> anyhow::Result<u8> {
    let c = Client::new(client)?;
    let json = cmd.out.json();
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
            if json {
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
            if json {
                println!("{v}");
            } else {
                let rows = v["workflows"].as_array().into_iter().flatten().map(|w| {
                    let nodes = w["definition"]["nodes"].as_array().map_or(0, Vec::len);
                    [
                        output::text(&w["name"]),
                        w["version"].to_string(),
                        format!("{nodes} nodes"),
                        output::time(&w["created_at"]),
                    ]
                });
                print!(
                    "{}",
                    output::table(["NAME", "VERSION", "NODES", "CREATED (UTC)"], rows)
                );
            }
        }
        WorkflowVerb::Show { name } => {
            let (name, version) = split(&name);
            let query = version.map(|q| format!("?{q}")).unwrap_or_default();
            let w = c.get(&format!("/v1/workflows/{name}{query}")).await?;
            if json {
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
        WorkflowVerb::Run {
            name,
            input,
            follow,
        } => {
            let (name, version) = match name.split_once('@') {
                Some((n, v)) => (
                    n.to_string(),
                    Some(v.parse::<i64>().ok().filter(|v| *v > 0).with_context(|| {
                        format!("invalid version {v:?} in {name:?}: expected NAME@N with N ≥ 1")
                    })?),
                ),
                None => (name, None),
            };
            let input = super::values::read_input(input.as_deref())?;
            let mut body = json!({});
            super::values::put_input(&mut body, &input);
            if let Some(v) = version {
                body["version"] = json!(v);
            }
            let run = c
                .post_json(
                    &format!("/v1/workflows/{}/runs", super::remote::urlencode(&name)),
                    &body,
                )
                .await?;
            let id = run["id"]
                .as_i64()
                .context("the server returned no run id")?;
            if follow {
                return follow_run(&c, id, json).await;
            }
            if json {
                println!("{run}");
            } else {
                println!("{id}");
            }
        }
        WorkflowVerb::Status { id, follow } => {
            let id = super::remote::check_id("workflow run", &id)?;
            if follow {
                return follow_run(&c, id, json).await;
            }
            let run = c.get(&format!("/v1/workflow-runs/{id}")).await?;
            if json {
                println!("{run}");
            } else {
                for line in render(&run, &HashMap::new()) {
                    println!("{line}");
                }
                if let Some(e) = run["error"].as_str() {
                    println!("error: {e}");
                }
            }
            return Ok(run_exit_code(&run));
        }
        WorkflowVerb::Cancel { id } => {
            let id = super::remote::check_id("workflow run", &id)?;
            let run = c
                .post_json(&format!("/v1/workflow-runs/{id}/cancel"), &json!({}))
                .await?;
            if json {
                println!("{run}");
            } else {
                println!("run {id}: {}", run["state"].as_str().unwrap_or("?"));
            }
        }
        WorkflowVerb::Retry { id, input, follow } => {
            let id = super::remote::check_id("workflow run", &id)?;
            let mut inputs = serde_json::Map::new();
            for given in input {
                let Some((node, value)) = given.split_once('=') else {
                    anyhow::bail!("--input {given:?}: give NODE=JSON (or NODE=@FILE)");
                };
                let bytes = super::values::read_input(Some(value))?;
                let value: serde_json::Value = serde_json::from_slice(&bytes)
                    .with_context(|| format!("--input {node}=…: a node's input is JSON"))?;
                inputs.insert(node.to_string(), value);
            }
            let run = c
                .post_json(
                    &format!("/v1/workflow-runs/{id}/retry"),
                    &json!({ "inputs": inputs }),
                )
                .await?;
            if follow {
                return follow_run(&c, id, json).await;
            }
            if json {
                println!("{run}");
            } else {
                println!("run {id}: {}", run["state"].as_str().unwrap_or("?"));
            }
        }
    }
    Ok(0)
}

/// 0 when the run succeeded, 1 when it failed, 15 when cancelled (as for a job), 3 otherwise.
fn run_exit_code(run: &Value) -> u8 {
    match run["state"].as_str() {
        Some("succeeded") => 0,
        Some("failed") => 1,
        Some("cancelled") => crate::exit::for_outcome(wasmjobs_host::Outcome::Cancelled),
        _ => crate::exit::ERROR,
    }
}

/// Follows a run: a live tree of its nodes on stderr (redrawn in place on a terminal, a line
/// per change otherwise), node logs above it, then the output on stdout.
async fn follow_run(c: &Client, id: i64, json_out: bool) -> anyhow::Result<u8> {
    let mut run = c.get(&format!("/v1/workflow-runs/{id}")).await?;
    // The stream replays the run's history from its start: begin from nothing.
    for n in run["nodes"].as_array_mut().into_iter().flatten() {
        n["state"] = json!("pending");
        for key in ["job", "error", "items"] {
            n[key] = Value::Null;
        }
    }
    let tty = std::io::stderr().is_terminal() && !json_out;
    let mut progress: HashMap<String, (u64, u64)> = HashMap::new();
    // On a terminal, the tree is redrawn in place (an indicatif bar whose message is the tree)
    // and log lines print above it.
    let tree = tty.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar
    });
    let redraw = |run: &Value, progress: &HashMap<String, (u64, u64)>| {
        if let Some(tree) = &tree {
            tree.set_message(render(run, progress).join("\n"));
        }
    };
    redraw(&run, &progress);
    c.follow(
        &format!("/v1/workflow-runs/{id}/events"),
        |_, event, data| {
            if json_out {
                println!("{}", json!({ "event": event, "data": data }));
                return;
            }
            let node = data["node"].as_str().unwrap_or("").to_string();
            match event {
                "node" => {
                    let mut changed = true;
                    if let Some(n) = run["nodes"]
                        .as_array_mut()
                        .and_then(|ns| ns.iter_mut().find(|n| n["name"] == node.as_str()))
                    {
                        changed = n["state"] != data["state"];
                        n["state"] = data["state"].clone();
                        for key in ["job", "error", "items"] {
                            if !data[key].is_null() {
                                n[key] = data[key].clone();
                            }
                        }
                    }
                    if !tty && changed {
                        eprintln!(
                            "{node}: {}{}",
                            data["state"].as_str().unwrap_or("?"),
                            data["error"]
                                .as_str()
                                .map(|e| format!(": {e}"))
                                .unwrap_or_default()
                        );
                    }
                }
                "run" => {
                    run["state"] = data["state"].clone();
                    if !tty {
                        eprintln!("run {id}: {}", data["state"].as_str().unwrap_or("?"));
                    }
                }
                "progress" => {
                    progress.insert(
                        node,
                        (
                            data["done"].as_u64().unwrap_or(0),
                            data["total"].as_u64().unwrap_or(0),
                        ),
                    );
                }
                "log" => {
                    let index = data["index"]
                        .as_i64()
                        .map(|i| format!("[{i}]"))
                        .unwrap_or_default();
                    let line = format!(
                        "[{node}{index} {}] {}",
                        data["level"].as_str().unwrap_or("info"),
                        data["message"].as_str().unwrap_or("")
                    );
                    match &tree {
                        Some(tree) => tree.println(line),
                        None => eprintln!("{line}"),
                    }
                }
                _ => {}
            }
            redraw(&run, &progress);
        },
    )
    .await?;
    let run = c.get(&format!("/v1/workflow-runs/{id}")).await?;
    if json_out {
        println!("{run}");
        return Ok(run_exit_code(&run));
    }
    if let Some(tree) = &tree {
        tree.finish_and_clear();
    }
    for line in render(&run, &HashMap::new()) {
        eprintln!("{line}");
    }
    match run["state"].as_str() {
        Some("succeeded") => println!("{}", run["output"]),
        _ => eprintln!(
            "run {id} {}: {}",
            run["state"].as_str().unwrap_or("?"),
            run["error"].as_str().unwrap_or("no message")
        ),
    }
    Ok(run_exit_code(&run))
}

/// The run as a tree: one line per node in definition order, indented by its depth (the
/// longest chain of `needs` above it), with its state, job and progress.
fn render(run: &Value, progress: &HashMap<String, (u64, u64)>) -> Vec<String> {
    let nodes: &[Value] = run["nodes"].as_array().map_or(&[], Vec::as_slice);
    let mut depth: HashMap<&str, usize> = HashMap::new();
    for n in nodes {
        let d = n["needs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str().and_then(|u| depth.get(u)))
            .map(|d| d + 1)
            .max()
            .unwrap_or(0);
        depth.insert(n["name"].as_str().unwrap_or(""), d);
    }
    let width = nodes
        .iter()
        .map(|n| {
            let name = n["name"].as_str().unwrap_or("");
            name.len() + 2 * depth.get(name).copied().unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    let mut lines = vec![format!(
        "run {} · {} v{} · {}",
        run["id"],
        run["workflow"].as_str().unwrap_or("?"),
        run["version"],
        run["state"].as_str().unwrap_or("?")
    )];
    for n in nodes {
        let name = n["name"].as_str().unwrap_or("");
        let state = n["state"].as_str().unwrap_or("?");
        let mark = match state {
            "succeeded" => "✓",
            "failed" => "✗",
            "running" => "▶",
            "skipped" => "-",
            "cancelled" => "⊘",
            _ => "·",
        };
        let indent = "  ".repeat(depth.get(name).copied().unwrap_or(0));
        let mut detail = String::new();
        if let Some(job) = n["job"].as_i64() {
            detail.push_str(&format!(" job {job}"));
        }
        if n["items"].is_object() {
            detail.push_str(&format!(
                " {}/{} elements",
                n["items"]["done"], n["items"]["total"]
            ));
            if n["items"]["failed"].as_i64().unwrap_or(0) > 0 {
                detail.push_str(&format!(", {} failed", n["items"]["failed"]));
            }
        } else if let Some((done, total)) = progress.get(name).filter(|_| state == "running") {
            detail.push_str(&format!(" {done}/{total}"));
        }
        if let Some(e) = n["error"].as_str() {
            detail.push_str(&format!(" — {e}"));
        }
        let pad = width.saturating_sub(indent.len() + name.len());
        lines.push(format!(
            "  {indent}{mark} {name}{} {state:<9}{detail}",
            " ".repeat(pad)
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_indents_by_depth_and_shows_states() {
        let run = json!({
            "id": 7, "workflow": "wc", "version": 2, "state": "running",
            "nodes": [
                {"name": "split", "state": "succeeded", "needs": [], "job": 11},
                {"name": "count", "state": "running", "needs": ["split"],
                 "items": {"done": 3, "total": 8, "failed": 0}},
                {"name": "merge", "state": "pending", "needs": ["count"]},
                {"name": "report", "state": "running", "needs": ["merge", "split"], "job": 20},
            ]
        });
        let progress = HashMap::from([("report".to_string(), (2, 5))]);
        let lines = render(&run, &progress);
        assert_eq!(lines[0], "run 7 · wc v2 · running");
        assert!(lines[1].starts_with("  ✓ split"), "{lines:?}");
        assert!(lines[1].ends_with("succeeded job 11"), "{lines:?}");
        assert!(lines[2].starts_with("    ▶ count"), "{lines:?}");
        assert!(lines[2].ends_with("3/8 elements"), "{lines:?}");
        assert!(lines[3].starts_with("      · merge"), "{lines:?}");
        assert!(lines[4].starts_with("        ▶ report"), "{lines:?}");
        assert!(lines[4].ends_with("job 20 2/5"), "{lines:?}");
    }
}
