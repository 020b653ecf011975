//! End to end with the real binary: `kill -9` of a loaded server loses nothing, and dead worker
//! nodes' jobs are finished by the others.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasmjobs_tests::{Process, guest_bytes, guests};

mod clients;
mod crashes;
mod dashboard;
mod events;
mod metrics;
mod otlp;
mod queues;
mod tls;

pub(super) async fn upload(http: &reqwest::Client, url: &str, wasm: &str, name: &str) {
    let r = http
        .post(format!("{url}/v1/modules?name={name}"))
        .body(guest_bytes(wasm))
        .send()
        .await
        .expect("upload");
    assert!(r.status().is_success(), "upload {name}: {}", r.status());
}

/// Submits `bodies` with some concurrency; returns the ids the server acknowledged (2xx).
pub(super) async fn submit_all(http: &reqwest::Client, url: &str, bodies: Vec<Value>) -> Vec<i64> {
    use futures::StreamExt;
    futures::stream::iter(bodies)
        .map(|b| {
            let http = http.clone();
            let url = url.to_string();
            async move {
                let r = http
                    .post(format!("{url}/v1/jobs"))
                    .json(&b)
                    .send()
                    .await
                    .ok()?;
                if !r.status().is_success() {
                    return None;
                }
                r.json::<Value>().await.ok()?["id"].as_i64()
            }
        })
        .buffer_unordered(16)
        .filter_map(|id| async move { id })
        .collect()
        .await
}

pub(super) fn job_body(i: usize) -> Value {
    match i % 10 {
        0 => {
            json!({"module": "testjob", "input": {"mode": "fail"}, "retry": {"max_attempts": 3, "initial_backoff_ms": "20ms"}})
        }
        1 | 2 => json!({"module": "testjob", "input": {"mode": "sleep", "ms": 30}}),
        _ => json!({"module": "noop", "input": {"n": i}}),
    }
}

/// A database of its own on the Postgres server `pg` (the binary uses the public schema).
pub(super) fn fresh_database(pg: &str, tag: &str) -> String {
    let dbname = format!("wasmjobs_{tag}_{}", std::process::id());
    let admin = std::process::Command::new("psql")
        .args([
            pg,
            "-q",
            "-c",
            &format!("DROP DATABASE IF EXISTS {dbname}"),
            "-c",
            &format!("CREATE DATABASE {dbname}"),
        ])
        .status();
    assert!(
        admin.is_ok_and(|s| s.success()),
        "cannot create database {dbname} with psql"
    );
    format!(
        "{}/{dbname}",
        pg.rsplit_once('/').map_or(pg, |(base, _)| base)
    )
}

/// Drops a database [`fresh_database`] made.
pub(super) fn drop_database(pg: &str, db: &str) {
    let dbname = db.rsplit('/').next().unwrap_or_default();
    let _ = std::process::Command::new("psql")
        .args([
            pg,
            "-q",
            "-c",
            &format!("DROP DATABASE IF EXISTS {dbname} WITH (FORCE)"),
        ])
        .status();
}

pub(super) async fn job(http: &reqwest::Client, url: &str, id: i64) -> Value {
    http.get(format!("{url}/v1/jobs/{id}"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

pub(super) async fn events(
    http: &reqwest::Client,
    url: &str,
    id: i64,
) -> Vec<(String, String, Value)> {
    let text = http
        .get(format!("{url}/v1/jobs/{id}/events"))
        .send()
        .await
        .expect("events")
        .text()
        .await
        .expect("text");
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let (mut id, mut ev, mut data) = (String::new(), String::new(), String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().into();
            } else if let Some(v) = line.strip_prefix("event:") {
                ev = v.trim().into();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim());
            }
        }
        if !ev.is_empty() {
            out.push((id, ev, serde_json::from_str(&data).unwrap_or(Value::Null)));
        }
    }
    out
}

/// Every job final; exactly one final state event, last; ids gapless; each attempt started
/// once and ended once.
pub(super) async fn check_histories(
    http: &reqwest::Client,
    url: &str,
    ids: &[i64],
) -> HashMap<String, usize> {
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for &id in ids {
        let j = job(http, url, id).await;
        let state = j["state"].as_str().unwrap_or("").to_string();
        assert!(
            ["succeeded", "failed"].contains(&state.as_str()),
            "job {id} ended {state}: {j}"
        );
        let evs = events(http, url, id).await;
        let seqs: Vec<i64> = evs.iter().filter_map(|(i, _, _)| i.parse().ok()).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as i64).collect::<Vec<_>>(),
            "job {id}: history has gaps"
        );
        let states: Vec<&str> = evs
            .iter()
            .filter(|(_, e, _)| e == "state")
            .filter_map(|(_, _, d)| d["state"].as_str())
            .collect();
        let finals = states
            .iter()
            .filter(|s| ["succeeded", "failed", "cancelled"].contains(s))
            .count();
        assert_eq!(finals, 1, "job {id} ended more than once: {states:?}");
        assert_eq!(
            states.last().copied(),
            Some(state.as_str()),
            "job {id}: {states:?}"
        );
        let running = states.iter().filter(|s| **s == "running").count();
        let attempts = j["attempts"].as_array().map(Vec::len).unwrap_or(0);
        assert_eq!(
            running, attempts,
            "job {id}: {running} starts but {attempts} attempts"
        );
        assert!(
            j["attempts"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|a| !a["outcome"].is_null()),
            "job {id}: an attempt never ended"
        );
        for a in j["attempts"].as_array().into_iter().flatten() {
            *outcomes
                .entry(a["outcome"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
    }
    outcomes
}

pub(super) async fn wait_all_final(
    http: &reqwest::Client,
    url: &str,
    ids: &[i64],
    within: Duration,
) {
    let until = Instant::now() + within;
    let mut pending: Vec<i64> = ids.to_vec();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for &id in &pending {
            let j = job(http, url, id).await;
            if !["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap_or("")) {
                still.push(id);
            }
        }
        pending = still;
        assert!(
            Instant::now() < until,
            "{} jobs not final within {within:?}: {:?}",
            pending.len(),
            &pending[..pending.len().min(10)]
        );
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Waits until the job or run at `url` (its `GET`) is in `state`; panics with what it last
/// was after `within`.
pub(super) async fn wait_for_state(
    http: &reqwest::Client,
    url: &str,
    state: &str,
    within: Duration,
) {
    let until = Instant::now() + within;
    loop {
        let v: Value = http
            .get(url)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if v["state"] == state {
            return;
        }
        assert!(
            Instant::now() < until,
            "{url} not {state} within {within:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until some job is running (a kill then finds attempts in flight; on a loaded
/// machine a fixed delay could find the node between jobs, and the round would prove nothing).
pub(super) async fn wait_some_running(http: &reqwest::Client, url: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let running = http
            .get(format!("{url}/v1/jobs?state=running&limit=1"))
            .send()
            .await
            .expect("list running jobs")
            .json::<Value>()
            .await
            .expect("list running jobs");
        if running["jobs"].as_array().is_some_and(|j| !j.is_empty()) {
            return;
        }
        assert!(Instant::now() < until, "no job ran within 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every succeeded job of `ids` has the output its input asks for: `noop` echoes its input,
/// `testjob` in `sleep` mode answers `"slept"`.
pub(super) async fn check_outputs(http: &reqwest::Client, url: &str, ids: &[i64]) {
    use base64::Engine as _;
    for &id in ids {
        let j: Value = http
            .get(format!("{url}/v1/jobs/{id}?include=input"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if j["state"] != "succeeded" {
            continue;
        }
        let input = base64::engine::general_purpose::STANDARD
            .decode(j["input_base64"].as_str().unwrap_or(""))
            .expect("base64");
        let input: Value = serde_json::from_slice(&input).expect("JSON input");
        let want = if input["mode"] == "sleep" {
            json!("slept")
        } else {
            input
        };
        assert_eq!(j["output"], want, "job {id}'s output: {j}");
    }
}

/// The `lost` attempts of `ids`: (job, worker, finished_at).
pub(super) async fn lost_attempts(
    http: &reqwest::Client,
    url: &str,
    ids: &[i64],
) -> Vec<(i64, String, i64)> {
    let mut lost = Vec::new();
    for &id in ids {
        let j = job(http, url, id).await;
        for a in j["attempts"].as_array().into_iter().flatten() {
            if a["outcome"] == "lost" {
                lost.push((
                    id,
                    a["worker"].as_str().unwrap_or("").to_string(),
                    a["finished_at"].as_i64().unwrap_or(i64::MAX),
                ));
            }
        }
    }
    lost
}
