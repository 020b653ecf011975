//! Workflow benchmark: prints, for SQLite and (when `WASMJOBS_TEST_POSTGRES` is set) Postgres,
//! in one run:
//! - a 50-node chain of trivial jobs: the run's wall time, the jobs' own time (each attempt's
//!   sandbox wall time), and the orchestration overhead per node — (run time − jobs' time) / 50;
//!   beside it, the same 50 jobs chained by hand (submit, wait for `succeeded`, submit the
//!   next), which is what the scheduler alone costs per step;
//! - a 1,000-wide `for_each` of trivial jobs: wall time from start to `succeeded`.
//!
//! Everything runs in this process on the real store, scheduler and engine (the same pieces
//! `wasmjobs serve` starts), with every sandbox limit on.
//!
//! Run with: `WASMJOBS_TEST_POSTGRES=postgres://… cargo bench -p wasmjobs-tests --bench workflow`
//! (`WASMJOBS_BENCH_REPEAT=N`: median of N chain runs instead of 5; `WASMJOBS_BENCH_PHASES=1`:
//! where each node's time goes).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use wasmjobs::admission::AdmissionPolicy;
use wasmjobs::scheduler::{Node, NodeConfig};
use wasmjobs::service::{JobService, SubmitJob};
use wasmjobs::store::{Backend, Notice, RunId, RunState, Store, now_ms};
use wasmjobs::workflow::WorkflowService;
use wasmjobs_tests::guests;

const CHAIN: usize = 50;
const WIDE: usize = 1000;
/// Chain runs measured (the median is printed); `WASMJOBS_BENCH_REPEAT` overrides it, for
/// A/B comparisons on this noisy machine.
const REPEAT: usize = 5;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    println!("wasmjobs workflow benchmark");
    println!(
        "machine: {} cores ({}); trivial jobs: tests/guests/flow",
        common::cores(),
        common::cpu_model()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut backends: Vec<(&str, Option<String>)> = vec![("sqlite", None)];
    match std::env::var("WASMJOBS_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => backends.push(("postgres", Some(url))),
        _ => println!("(postgres skipped: set WASMJOBS_TEST_POSTGRES)"),
    }
    for (backend, url) in backends {
        let store: Arc<dyn Backend> = match &url {
            None => wasmjobs::store::open(dir.path().join("wf.db").to_str().expect("path"))
                .await
                .expect("sqlite"),
            Some(url) => wasmjobs::store::open_postgres_schema(
                url,
                &format!("bench_wf_{}", std::process::id()),
            )
            .await
            .expect("postgres"),
        };
        // The notices go out as they do from `wasmjobs serve` (NOTIFY on Postgres).
        let relay = wasmjobs::notices::Relay::start(&*store)
            .await
            .expect("notice relay");
        println!();
        println!("== {backend}");
        bench(store).await;
        relay.shutdown().await;
    }
}

async fn bench(store: Arc<dyn Backend>) {
    let (sandbox, modules) =
        wasmjobs_tests::install_guest(store.as_ref(), guests::FLOW, "flow", 128).await;
    let jobs = JobService::new(store.clone(), AdmissionPolicy::default());
    let node = Node::start(
        jobs.clone(),
        None,
        sandbox,
        modules,
        NodeConfig {
            concurrency: 16,
            claim_batch: 256,
            maintenance: false,
            poll: Duration::from_millis(50),
            ..NodeConfig::default()
        },
    );
    let workflows = WorkflowService::new(jobs.clone(), store.clone());
    let engine = wasmjobs::workflow::engine::start(workflows.clone());

    // The chain, defined once, run REPEAT times (after one warm-up run).
    let nodes: Vec<_> = (0..CHAIN)
        .map(|i| {
            let mut n = json!({ "name": format!("s{i}"), "module": "flow" });
            if i > 0 {
                n["needs"] = json!([format!("s{}", i - 1)]);
            }
            n
        })
        .collect();
    let def = json!({ "name": "chain", "nodes": nodes }).to_string();
    store
        .put_workflow("chain", &def, now_ms())
        .await
        .expect("define chain");
    let repeat: usize = std::env::var("WASMJOBS_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(REPEAT);
    let mut wall = Vec::new();
    let mut own = Vec::new();
    for i in 0..=repeat {
        let (elapsed, jobs_time) = run_chain(&workflows).await;
        if i > 0 {
            wall.push(elapsed);
            own.push(jobs_time);
        }
    }
    let by_hand = chain_by_hand(&jobs).await;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (w, o) = (median(&mut wall), median(&mut own));
    println!(
        "   {CHAIN}-node chain: run {:.1} ms, jobs' own time {:.1} ms → overhead {:.2} ms per node (median of {repeat})",
        w * 1e3,
        o * 1e3,
        (w - o) * 1e3 / CHAIN as f64
    );
    println!(
        "   the same {CHAIN} jobs chained by hand through the job service: {:.1} ms ({:.2} ms per job)",
        by_hand * 1e3,
        by_hand * 1e3 / CHAIN as f64
    );

    // The fan-out.
    let def = json!({ "name": "wide", "nodes": [
        { "name": "fan", "module": "flow", "for_each": { "items": "/items", "concurrency": WIDE } },
    ]})
    .to_string();
    store
        .put_workflow("wide", &def, now_ms())
        .await
        .expect("define wide");
    let items: Vec<usize> = (0..WIDE).collect();
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let id = start(&workflows, "wide", json!({ "items": items })).await;
        let run = wait(&workflows, id).await;
        assert_eq!(run, RunState::Succeeded);
        times.push(t.elapsed().as_secs_f64());
    }
    let best = times.iter().copied().fold(f64::MAX, f64::min);
    println!(
        "   {WIDE}-wide for_each: {:.2} s start → succeeded (best of 3; runs: {})",
        best,
        times
            .iter()
            .map(|t| format!("{t:.2} s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    engine.shutdown().await;
    node.shutdown().await;
}

async fn start(workflows: &WorkflowService, name: &str, input: serde_json::Value) -> RunId {
    workflows
        .start_run(name, None, input.to_string().into_bytes())
        .await
        .expect("start")
        .0
        .id
}

/// Waits for the run to end, woken by its own notices.
async fn wait(workflows: &WorkflowService, id: RunId) -> RunState {
    let mut notices = workflows.store().subscribe();
    loop {
        let snap = workflows
            .runs()
            .get_run(id)
            .await
            .expect("get run")
            .expect("run");
        if snap.run.state.is_final() {
            return snap.run.state;
        }
        loop {
            match tokio::time::timeout(Duration::from_millis(200), notices.recv()).await {
                Ok(Ok(Notice::Run(r))) if r == id => break,
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
    }
}

/// One chain run: wall time, and the sum of its attempts' sandbox wall times.
async fn run_chain(workflows: &WorkflowService) -> (f64, f64) {
    let t = Instant::now();
    let id = start(workflows, "chain", json!({ "n": 0 })).await;
    assert_eq!(wait(workflows, id).await, RunState::Succeeded);
    let elapsed = t.elapsed().as_secs_f64();
    let snap = workflows
        .runs()
        .get_run(id)
        .await
        .expect("run")
        .expect("run");
    let mut own_us = 0;
    let mut ids = Vec::new();
    for n in &snap.nodes {
        let job = n.job_id.expect("job");
        ids.push(job);
        for a in workflows.store().attempts(job).await.expect("attempts") {
            own_us += a.wall_time_us.unwrap_or(0);
        }
    }
    ids.sort_unstable();
    if std::env::var_os("WASMJOBS_BENCH_PHASES").is_some() {
        phases(workflows.store().as_ref(), &ids).await;
    }
    (elapsed, own_us as f64 / 1e6)
}

/// Where a chain's time goes, from the jobs' own timestamps (milliseconds, averaged): waiting
/// to be claimed, claimed to finished, finished to the next job's creation.
async fn phases(store: &dyn Store, chain: &[i64]) {
    let (mut queued, mut running, mut between) = (0.0, 0.0, 0.0);
    let mut prev_finished: Option<i64> = None;
    for &id in chain {
        let job = store.get_job(id).await.expect("job").expect("job");
        let events = store.events(id, 0, 100).await.expect("events");
        let started = events
            .iter()
            .find(|e| e.kind == "state" && e.data["state"] == "running")
            .map_or(job.created_at, |e| e.at);
        queued += (started - job.created_at) as f64;
        running += (job.finished_at.unwrap_or(started) - started) as f64;
        if let Some(f) = prev_finished {
            between += (job.created_at - f) as f64;
        }
        prev_finished = job.finished_at;
    }
    let n = chain.len() as f64;
    println!(
        "     phases (ms per node): created → running {:.2}, running → finished {:.2}, finished → next created {:.2}",
        queued / n,
        running / n,
        between / (n - 1.0)
    );
}

/// The chain without the workflow service: submit, wait until `succeeded`, submit the next.
async fn chain_by_hand(jobs: &JobService) -> f64 {
    let t = Instant::now();
    let mut input = json!({ "n": 0 });
    let mut ids = Vec::new();
    for _ in 0..CHAIN {
        let (job, _) = jobs
            .submit(
                SubmitJob {
                    module: "flow".into(),
                    input: Some(input.clone()),
                    ..SubmitJob::default()
                },
                &wasmjobs::caller::Caller::local_admin(),
            )
            .await
            .expect("submit");
        let mut watch = jobs.watchers.watch(job.id);
        let done = loop {
            let j = jobs.store.get_job(job.id).await.expect("get").expect("job");
            if j.state.is_final() {
                break j;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), watch.changed()).await;
        };
        input = serde_json::from_slice(&done.output.unwrap_or_default()).expect("json output");
        ids.push(job.id);
    }
    let elapsed = t.elapsed().as_secs_f64();
    if std::env::var_os("WASMJOBS_BENCH_PHASES").is_some() {
        phases(jobs.store.as_ref(), &ids).await;
    }
    assert_eq!(input["n"], CHAIN);
    elapsed
}
