//! HTTP API benchmark, from a separate load-generating process (this one) over loopback HTTP
//! against the real `wasmjobs serve` (release build), on SQLite and on Postgres in one run:
//!
//! - latency from `POST /v1/jobs` to the final SSE event of `GET /v1/jobs/{id}/events`
//!   (p50, p99, max) at a steady, open-loop 500 jobs/s;
//! - the sustained submit rate: 32 connections submitting back to back.
//!
//! Run with: `cargo bench -p wasmjobs-tests --bench api` (`-- --quick` for a short run).
//! Postgres runs when `WASMJOBS_TEST_POSTGRES` names a database (a fresh database is created
//! beside it); `WASMJOBS_BENCH_BACKENDS=sqlite` (or `postgres`) runs one backend only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use wasmjobs_tests::{free_port, guest_bytes, guests};

mod common;
use common::{cores, cpu_model};

/// Attempts in flight on the server (`--workers`; `WASMJOBS_BENCH_WORKERS` overrides).
fn workers() -> usize {
    std::env::var("WASMJOBS_BENCH_WORKERS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(16)
}

/// Jobs per second of the latency run (`WASMJOBS_BENCH_RATE` overrides; the issue's figure is 500).
fn rate() -> u64 {
    std::env::var("WASMJOBS_BENCH_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(500)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let steady = Duration::from_secs(if quick { 3 } else { 10 });
    let burst = Duration::from_secs(if quick { 2 } else { 5 });

    println!("wasmjobs HTTP API benchmark");
    println!("machine: {} cores, {}", cores(), cpu_model());
    println!(
        "server: wasmjobs serve (release) --workers {}; job: tests/guests/noop; client: this process, same machine{}",
        workers(),
        if quick { " (--quick)" } else { "" }
    );
    println!();

    let bin = wasmjobs_release();
    let only = std::env::var("WASMJOBS_BENCH_BACKENDS").unwrap_or_default();
    let mut backends = vec!["sqlite"];
    match std::env::var("WASMJOBS_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => backends.push("postgres"),
        _ => println!("(Postgres skipped: set WASMJOBS_TEST_POSTGRES to include it)\n"),
    }
    for backend in backends {
        if !only.is_empty() && !only.split(',').any(|b| b == backend) {
            continue;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let db = match backend {
            "sqlite" => dir.path().join("bench.db").display().to_string(),
            _ => fresh_postgres_database(),
        };
        let server = Server::start(&bin, dir.path(), &db);
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .expect("client");
        let upload = http
            .post(format!("{}/v1/modules?name=noop", server.url))
            .header("content-type", "application/wasm")
            .body(guest_bytes(guests::NOOP))
            .send()
            .await
            .expect("upload");
        assert!(upload.status().is_success(), "upload: {}", upload.status());

        // Warm up: connections, the module's prepared instance, the database's caches.
        let _ = steady_latency(&http, &server.url, Duration::from_secs(1)).await;
        let lat = steady_latency(&http, &server.url, steady).await;
        println!("{backend}:");
        println!(
            "  POST /v1/jobs → final SSE event, open loop at {} jobs/s for {:?}: {} jobs at {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {}{}",
            rate(),
            steady,
            lat.count,
            lat.rate,
            lat.p50,
            lat.p99,
            lat.max,
            lat.errors,
            if backend == "sqlite" {
                "  (target p99 < 20 ms)"
            } else {
                ""
            }
        );
        println!(
            "    of which POST /v1/jobs → 201 (accepted, durable): p50 {:.2} ms, p99 {:.2} ms",
            lat.submit_p50, lat.submit_p99
        );
        let rate = submit_rate(&http, &server.url, burst).await;
        println!(
            "  sustained submit rate, 32 connections for {burst:?}: {rate:.0} jobs/s accepted"
        );
        println!();
        drop(server);
        if backend == "postgres" {
            drop_postgres_database();
        }
    }
}

/// `target/release/wasmjobs`, built now from the current sources.
fn wasmjobs_release() -> PathBuf {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "wasmjobs", "--bin", "wasmjobs"])
        .current_dir(guests::ROOT)
        .status()
        .expect("cargo build");
    assert!(status.success(), "building wasmjobs failed");
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .ancestors()
        .nth(3)
        .expect("target dir")
        .join("release")
        .join("wasmjobs");
    assert!(bin.is_file(), "no binary at {}", bin.display());
    bin
}

/// The name of this run's Postgres database.
fn bench_database() -> String {
    format!("wasmjobs_bench_api_{}", std::process::id())
}

/// Runs SQL `commands` with `psql` against `url`, one `-c` each; whether all succeeded.
fn psql(url: &str, commands: &[String]) -> bool {
    let mut cmd = Command::new("psql");
    cmd.args([url, "-q"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd.status().is_ok_and(|s| s.success())
}

/// Drops this run's database once its server is gone: nothing is left on the shared server.
fn drop_postgres_database() {
    let Ok(pg) = std::env::var("WASMJOBS_TEST_POSTGRES") else {
        return;
    };
    let name = bench_database();
    if !psql(
        &pg,
        &[format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")],
    ) {
        println!("(could not drop the bench database {name})");
    }
}

/// A new database beside `WASMJOBS_TEST_POSTGRES` (the server uses its public schema).
fn fresh_postgres_database() -> String {
    let pg = std::env::var("WASMJOBS_TEST_POSTGRES").expect("postgres url");
    let name = bench_database();
    let ok = psql(
        &pg,
        &[
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
        ],
    );
    assert!(ok, "cannot create database {name} with psql");
    format!(
        "{}/{name}",
        pg.rsplit_once('/').map_or(pg.as_str(), |(base, _)| base)
    )
}

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(bin: &Path, dir: &Path, db: &str) -> Server {
        let port = free_port();
        let child = Command::new(bin)
            .args(["serve", "--db", db, "--addr", &format!("127.0.0.1:{port}")])
            .args(["--workers", &workers().to_string()])
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start wasmjobs serve");
        let until = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "wasmjobs serve did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Latency {
    count: usize,
    rate: f64,
    p50: f64,
    p99: f64,
    max: f64,
    errors: usize,
    /// Of which `POST /v1/jobs` → `201`.
    submit_p50: f64,
    submit_p99: f64,
}

/// Starts one job every 1/RATE s (open loop: a slow answer does not slow the arrivals) and
/// measures, for each, from sending its `POST /v1/jobs` to reading its SSE `end` event.
async fn steady_latency(http: &reqwest::Client, url: &str, duration: Duration) -> Latency {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut tasks = Vec::new();
    let url: Arc<str> = url.into();
    while start.elapsed() < duration {
        tick.tick().await;
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move { one_job(&http, &url).await }));
    }
    let sent = start.elapsed().as_secs_f64();
    let mut ms = Vec::new();
    let mut submit_ms = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Ok((accepted, done))) => {
                submit_ms.push(accepted.as_secs_f64() * 1e3);
                ms.push(done.as_secs_f64() * 1e3);
            }
            _ => errors += 1,
        }
    }
    ms.sort_by(f64::total_cmp);
    submit_ms.sort_by(f64::total_cmp);
    let pct_of = |v: &[f64], p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let pct = |p: f64| pct_of(&ms, p);
    Latency {
        count: ms.len() + errors,
        rate: (ms.len() + errors) as f64 / sent,
        p50: pct(0.50),
        p99: pct(0.99),
        max: ms.last().copied().unwrap_or(f64::NAN),
        errors,
        submit_p50: pct_of(&submit_ms, 0.50),
        submit_p99: pct_of(&submit_ms, 0.99),
    }
}

async fn one_job(http: &reqwest::Client, url: &str) -> Result<(Duration, Duration), String> {
    let t0 = Instant::now();
    let r = http
        .post(format!("{url}/v1/jobs"))
        .json(&serde_json::json!({ "module": "noop", "input": "x" }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != reqwest::StatusCode::CREATED {
        return Err(format!("submit: {}", r.status()));
    }
    let job: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
    let accepted = t0.elapsed();
    let id = job["id"].as_i64().ok_or("no id")?;
    let events = http
        .get(format!("{url}/v1/jobs/{id}/events"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = events.bytes_stream();
    let mut seen = Vec::new();
    while let Some(chunk) = stream.next().await {
        seen.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
        if seen.windows(10).any(|w| w == b"event: end") {
            let elapsed = t0.elapsed();
            let text = String::from_utf8_lossy(&seen);
            return if text.contains(r#""outcome":"succeeded""#) {
                Ok((accepted, elapsed))
            } else {
                Err(format!("job {id} did not succeed: {text}"))
            };
        }
    }
    Err(format!("job {id}: the stream closed before its end event"))
}

/// Jobs accepted per second with 32 connections submitting back to back.
async fn submit_rate(http: &reqwest::Client, url: &str, duration: Duration) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (http, url) = (http.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < duration {
                let r = http
                    .post(format!("{url}/v1/jobs"))
                    .json(&serde_json::json!({ "module": "noop", "input": "x" }))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == reqwest::StatusCode::CREATED) {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total as f64 / start.elapsed().as_secs_f64()
}
