//! Fair shares benchmark: a backlog of slow jobs in one queue, quick jobs arriving in another.
//! For SQLite and (when `WASMJOBS_TEST_POSTGRES` is set) Postgres, one node with 2 slots:
//! - 2,000 jobs of 500 ms (`tests/guests/sleeper`) submitted to queue `bulk` first;
//! - then quick jobs (`tests/guests/noop`, which echoes its input) submitted to queue `default`
//!   at 20/s for 30 s; both queues of weight 1;
//! - prints the quick jobs' latency from submit to their end being announced (p50, p99, max),
//!   and the bulk queue's throughput over the same 30 s beside what the two slots can do at
//!   most (4 jobs of 500 ms per second).
//!
//! Without queues (one FIFO by priority) the quick jobs would wait behind the whole backlog:
//! 2,000 × 500 ms / 2 slots = 500 s.
//!
//! Run with: `WASMJOBS_TEST_POSTGRES=postgres://… cargo bench -p wasmjobs-tests --bench fairness`
//! (`WASMJOBS_BENCH_BACKENDS=sqlite|postgres` for one backend).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmjobs::admission::AdmissionPolicy;
use wasmjobs::caller::Caller;
use wasmjobs::scheduler::{Node, NodeConfig};
use wasmjobs::service::{JobService, SubmitJob};
use wasmjobs::store::{Backend, JobState, Notice, Store};
use wasmjobs_tests::guests;

mod common;

const BULK_JOBS: usize = 2_000;
const BULK_MS: u64 = 500;
const QUICK_PER_SECOND: u64 = 20;
const QUICK_FOR: Duration = Duration::from_secs(30);
const SLOTS: usize = 2;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    println!("wasmjobs fair shares benchmark");
    println!(
        "machine: {} cores; one node, {SLOTS} slots; {BULK_JOBS} jobs of {BULK_MS} ms in `bulk` first, then quick jobs in `default` at {QUICK_PER_SECOND}/s for {} s; equal weights",
        std::thread::available_parallelism().map_or(1, |c| c.get()),
        QUICK_FOR.as_secs()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    for (backend, url) in common::backends(dir.path().join("fair.db").display().to_string()) {
        println!();
        println!("== {backend}");
        let schema = format!("fair_{}", std::process::id());
        let whole: Arc<dyn Backend> = match backend {
            "sqlite" => wasmjobs::store::open(&url).await.expect("sqlite store"),
            _ => wasmjobs::store::open_postgres_schema(&url, &schema)
                .await
                .expect("postgres store"),
        };
        let store: Arc<dyn Store> = whole.clone();
        let relay = wasmjobs::notices::Relay::start(&*store)
            .await
            .expect("notice relay");
        run(store.clone()).await;
        relay.shutdown().await;
        drop(whole);
        if backend == "postgres" {
            let pool = sqlx::PgPool::connect(&url).await.expect("postgres");
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .execute(&pool)
            .await;
        }
    }
}

async fn run(store: Arc<dyn Store>) {
    let (sandbox, modules) =
        wasmjobs_tests::install_guest(store.as_ref(), guests::SLEEPER, "sleeper", 64).await;
    let noop = wasmjobs_tests::guest_bytes(guests::NOOP);
    let digest = wasmjobs_host::sha256_digest(&noop);
    modules
        .insert(&sandbox, &digest, noop.clone())
        .await
        .expect("module");
    store
        .put_module(
            wasmjobs::store::NewModule {
                digest,
                world: "wasmjobs:job/job".into(),
                imports: vec![],
                bytes: noop,
                name: Some("noop".into()),
                owner: None,
                may_move: true,
            },
            wasmjobs::store::now_ms(),
        )
        .await
        .expect("put module");
    let service = JobService::new(store.clone(), AdmissionPolicy::default());
    let admin = Caller::local_admin();
    let bulk: Vec<SubmitJob> = (0..BULK_JOBS)
        .map(|_| SubmitJob {
            module: "sleeper".into(),
            input_base64: Some(base64_text(&BULK_MS.to_string())),
            queue: Some("bulk".into()),
            ..SubmitJob::default()
        })
        .collect();
    let mut bulk_ids = std::collections::HashSet::new();
    for chunk in bulk.chunks(500) {
        for r in service.submit_many(chunk.to_vec(), &admin).await {
            bulk_ids.insert(r.expect("submit bulk").0.id);
        }
    }
    let node = Node::start(
        service.clone(),
        None,
        sandbox,
        modules,
        NodeConfig {
            concurrency: SLOTS,
            ..NodeConfig::default()
        },
    );
    // Ends, as the store announces them: quick jobs by id, bulk jobs counted.
    let mut ends = store.subscribe();
    let submitted: Arc<std::sync::Mutex<HashMap<i64, Instant>>> = Arc::default();
    let watcher = {
        let submitted = submitted.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut bulk_ended = 0usize;
            let started = Instant::now();
            let quick_total = (QUICK_PER_SECOND * QUICK_FOR.as_secs()) as usize;
            while latencies.len() < quick_total {
                let id = match ends.recv().await {
                    Ok(Notice::Ended(id)) => id,
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        panic!("missed {n} notices")
                    }
                    Err(_) => break,
                };
                let now = Instant::now();
                if bulk_ids.contains(&id) {
                    if now.duration_since(started) <= QUICK_FOR {
                        bulk_ended += 1;
                    }
                    continue;
                }
                // An end may be announced before its submit returned: wait for the record.
                let at = loop {
                    if let Some(at) = submitted.lock().expect("lock").get(&id) {
                        break *at;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                };
                let job = store.get_job(id).await.expect("get").expect("job");
                assert_eq!(job.state, JobState::Succeeded, "{job:?}");
                latencies.push(now.duration_since(at).as_secs_f64() * 1000.0);
            }
            (latencies, bulk_ended)
        })
    };
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / QUICK_PER_SECOND));
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < QUICK_FOR {
        tick.tick().await;
        let at = Instant::now();
        let job = service
            .submit(
                SubmitJob {
                    module: "noop".into(),
                    input: Some(serde_json::json!({ "i": i })),
                    ..SubmitJob::default()
                },
                &admin,
            )
            .await
            .expect("submit quick")
            .0;
        submitted.lock().expect("lock").insert(job.id, at);
        i += 1;
        if i as u64 == QUICK_PER_SECOND * QUICK_FOR.as_secs() {
            break;
        }
    }
    let (mut latencies, bulk_ended) = tokio::time::timeout(Duration::from_secs(120), watcher)
        .await
        .expect("every quick job ended within 2 minutes")
        .expect("watcher");
    node.drain(Duration::from_secs(1)).await;
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "   quick jobs in `default`, submit → end: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms   ({} jobs)",
        pct(0.5),
        pct(0.99),
        latencies.last().copied().unwrap_or(0.0),
        latencies.len()
    );
    let most = SLOTS as f64 * 1000.0 / BULK_MS as f64;
    let bulk_rate = bulk_ended as f64 / QUICK_FOR.as_secs_f64();
    println!(
        "   `bulk` meanwhile: {bulk_rate:.2} jobs/s of the slots' {most:.2} at most ({:.0}%)",
        100.0 * bulk_rate / most
    );
}

fn base64_text(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}
