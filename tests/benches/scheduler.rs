//! Scheduler benchmark: prints, for SQLite and (when `WASMJOBS_TEST_POSTGRES` is set) Postgres,
//! in one run:
//! - the ceiling: a raw, minimal, batched SQL lifecycle (insert, claim, complete) on the same
//!   database;
//! - wasmjobs throughput: N trivial jobs submitted through the job service (each accepted job
//!   durable before its submit returns) until all are `succeeded`, each run in a fresh sandbox
//!   with every limit on, and the ratio to the ceiling; once one job per `submit`, once in
//!   batches of 1,000 per `submit_many`, as `POST /v1/jobs/batch` takes them; each from 64
//!   submitters, run by a node configured as `wasmjobs serve` runs it by default (one slot
//!   per core);
//! - latency from submit to the job's end being announced (p50, p99) at a steady 500 jobs/s;
//! - peak RSS, and the CPU time per job of this process and of the local Postgres server.
//!
//! Run with: `WASMJOBS_TEST_POSTGRES=postgres://… cargo bench -p wasmjobs-tests --bench scheduler`
//! (`-- --quick` for N = 5,000; `WASMJOBS_BENCH_BACKENDS=sqlite|postgres` for one backend;
//! `WASMJOBS_BENCH_SLOTS` for the node's slots in the one-by-one run, one per core by default;
//! `WASMJOBS_BENCH_RUNS=single|batched` for one of the two throughput runs;
//! `WASMJOBS_BENCH_PG_SQL` for statements to run in the Postgres store's schema first;
//! `WASMJOBS_BENCH_BATCH` and `WASMJOBS_BENCH_BATCH_SLOTS` for the batched run's batch size and
//! slots, 1,000 and one per core by default; `WASMJOBS_BENCH_CLAIM_BATCH` and
//! `WASMJOBS_BENCH_CLAIM_AHEAD` for the node's `claim_batch` and `claim_ahead`, its defaults
//! otherwise; `WASMJOBS_BENCH_KEEP_SCHEMA=1` leaves the Postgres schema behind for a look;
//! `WASMJOBS_BENCH_JOB=noop` runs the Rust SDK job `tests/guests/noop` instead of the sandbox
//! benchmark's trivial component, which imports nothing and returns `ok` (decision 011); with
//! the trivial component a full run, or `WASMJOBS_BENCH_RUNS=sdk`, also runs the Rust SDK job
//! batched, for reference; `WASMJOBS_BENCH_KEYS=unique` gives every job a concurrency key of
//! its own (limit 1: the cost of a key's place, taken and given back, on every job), and
//! `WASMJOBS_BENCH_KEYS=N` gives job i the key `k{i % N}` with limit 1 (each key's jobs one at
//! a time, each end handing its place to the next); `WASMJOBS_BENCH_WEBHOOK=1` runs each throughput run three times without and three times
//! with a webhook subscribed to every job's end (its deliveries sent to a receiver in this
//! process), alternately, and prints the medians and the deliveries' rate (`=outbox`: with
//! the webhook but no dispatcher, so that the events wait in the outbox: the job path's own
//! cost);
//! `WASMJOBS_BENCH_WATCH=1` then runs each throughput run three times
//! without and three times with a Prometheus scraper and the dashboard's overview watching the
//! API, alternately, and prints the medians).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Executor;
use wasmjobs::admission::AdmissionPolicy;
use wasmjobs::scheduler::{Node, NodeConfig};
use wasmjobs::service::{JobService, SubmitJob};
use wasmjobs::store::{Backend, JobFilter, JobState, Notice, Store};
use wasmjobs_tests::guests;

mod common;

/// The job the runs submit: the sandbox benchmark's trivial component (the "trivial job" the
/// targets name: decision 011), or with `WASMJOBS_BENCH_JOB=noop`
/// `tests/guests/noop`, a Rust SDK job that echoes its input. A full run also prints a batched
/// line of the Rust SDK job beside the trivial component's, for reference.
#[derive(Clone, Copy)]
enum BenchJob {
    Noop,
    Trivial,
}

impl BenchJob {
    fn from_env() -> BenchJob {
        match std::env::var("WASMJOBS_BENCH_JOB").as_deref() {
            Err(_) | Ok("") | Ok("trivial") => BenchJob::Trivial,
            Ok("noop") => BenchJob::Noop,
            Ok(other) => {
                eprintln!("WASMJOBS_BENCH_JOB={other}: expected trivial or noop");
                std::process::exit(2)
            }
        }
    }

    fn describe(self) -> &'static str {
        match self {
            BenchJob::Noop => "tests/guests/noop, a Rust SDK job that echoes its input",
            BenchJob::Trivial => {
                "the sandbox benchmark's trivial component: imports nothing, returns ok"
            }
        }
    }

    fn bytes(self) -> Vec<u8> {
        match self {
            BenchJob::Noop => wasmjobs_tests::guest_bytes(guests::NOOP),
            BenchJob::Trivial => common::trivial_component(),
        }
    }
}

/// The name the benchmark's job is stored under and submitted by.
const JOB_NAME: &str = "bench-job";

/// `WASMJOBS_BENCH_KEYS`: the concurrency key of job `i` (limit 1), if the runs use keys.
fn bench_key(i: usize) -> Option<String> {
    static KEYS: std::sync::OnceLock<Option<Keys>> = std::sync::OnceLock::new();
    match KEYS.get_or_init(Keys::from_env) {
        None => None,
        Some(Keys::Unique) => Some(format!("job-{i}")),
        Some(Keys::Shared(n)) => Some(format!("k{}", i % n)),
    }
}

#[derive(Clone, Copy)]
enum Keys {
    /// A key per job.
    Unique,
    /// `n` keys, job i's `k{i % n}`.
    Shared(usize),
}

impl Keys {
    fn from_env() -> Option<Keys> {
        match std::env::var("WASMJOBS_BENCH_KEYS").as_deref() {
            Err(_) | Ok("") => None,
            Ok("unique") => Some(Keys::Unique),
            Ok(n) => match n.parse::<usize>() {
                Ok(n) if n > 0 => Some(Keys::Shared(n)),
                _ => {
                    eprintln!("WASMJOBS_BENCH_KEYS={n}: expected unique or a number of keys");
                    std::process::exit(2)
                }
            },
        }
    }

    fn describe(self) -> String {
        match self {
            Keys::Unique => "every job with a concurrency key of its own (limit 1)".into(),
            Keys::Shared(n) => format!("every job with one of {n} concurrency keys (limit 1)"),
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: usize = if quick { 5_000 } else { 50_000 };
    let job = BenchJob::from_env();
    println!("wasmjobs scheduler benchmark");
    println!(
        "machine: {} cores; N = {n} trivial jobs ({}) per backend{}",
        std::thread::available_parallelism().map_or(1, |c| c.get()),
        job.describe(),
        if quick { " (--quick)" } else { "" }
    );
    if let Some(keys) = Keys::from_env() {
        println!("keys: {}", keys.describe());
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for (backend, url) in common::backends(dir.path().join("bench.db").display().to_string()) {
        println!();
        println!("== {backend}");
        if backend == "postgres" {
            // Whether dead row versions are vacuumed away during the run changes what the
            // queue's indexes cost (docs/scheduler.md): say which it is.
            let autovacuum: String = match sqlx::PgPool::connect(&url).await {
                Ok(pool) => sqlx::query_scalar("SHOW autovacuum")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or_else(|e| format!("unknown ({e})")),
                Err(e) => format!("unknown ({e})"),
            };
            println!("   (server: autovacuum {autovacuum})");
        }
        let cpu_before = cpu_seconds();
        let ceiling = raw_ceiling(backend, &url, n, dir.path()).await;
        let cpu_after = cpu_seconds();
        println!(
            "   raw batched SQL lifecycle (ceiling): {ceiling:>9.0} jobs/s   (CPU per job: this process {:.1} µs, the Postgres server {:.1} µs)",
            (cpu_after.0 - cpu_before.0) * 1e6 / n as f64,
            (cpu_after.1 - cpu_before.1) * 1e6 / n as f64,
        );
        let whole = open(backend, &url).await;
        let store: Arc<dyn Store> = whole.clone();
        // The metrics are recorded, and the notices go out, as they do in `wasmjobs serve`
        // (NOTIFY on Postgres).
        wasmjobs::telemetry::handle();
        let relay = wasmjobs::notices::Relay::start(&*store)
            .await
            .expect("notice relay");
        // WASMJOBS_BENCH_PG_SQL: statements run in the Postgres store's schema before the runs,
        // to try a change of the schema (an index, a storage parameter) without a migration.
        if let Ok(sql) = std::env::var("WASMJOBS_BENCH_PG_SQL")
            && backend == "postgres"
            && !sql.is_empty()
        {
            let pool = sqlx::PgPool::connect(&url).await.expect("postgres");
            let sql = format!("SET search_path TO {}; {sql}", bench_schema());
            pool.execute(sqlx::AssertSqlSafe(sql))
                .await
                .expect("WASMJOBS_BENCH_PG_SQL");
            println!("   (ran WASMJOBS_BENCH_PG_SQL)");
        }
        // The node as `wasmjobs serve` runs it by default: one slot per core.
        let cores = NodeConfig::default().concurrency;
        let single = Shape {
            batch: 1,
            slots: env_number("WASMJOBS_BENCH_SLOTS", cores),
        };
        // WASMJOBS_BENCH_RUNS=batched (or single) runs one of the two throughput runs.
        let runs = std::env::var("WASMJOBS_BENCH_RUNS").unwrap_or_default();
        if runs.is_empty() || runs.contains("single") {
            let (throughput, latency) =
                wasmjobs_run(store.clone(), job, n, single, true, None, None).await;
            println!(
                "   wasmjobs, submit → succeeded:        {throughput:>9.0} jobs/s   ({:.0}% of the ceiling)   [one job per submit, {} slots]",
                100.0 * throughput / ceiling,
                single.slots
            );
            if let Some((p50, p99, max)) = latency {
                println!(
                    "   latency submit → succeeded at 500 jobs/s: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
                );
            }
        }
        let batched = Shape {
            batch: env_number("WASMJOBS_BENCH_BATCH", 1000),
            slots: env_number("WASMJOBS_BENCH_BATCH_SLOTS", cores),
        };
        if runs.is_empty() || runs.contains("batched") {
            let (throughput, _) =
                wasmjobs_run(store.clone(), job, n, batched, false, None, None).await;
            println!(
                "   wasmjobs, batch submit → succeeded:  {throughput:>9.0} jobs/s   ({:.0}% of the ceiling)   [{} jobs per submit_many (POST /v1/jobs/batch), {} slots]",
                100.0 * throughput / ceiling,
                batched.batch,
                batched.slots
            );
        }
        // For reference, the same batched run of a job built with the Rust SDK (it reads its
        // input and writes it back: two host calls, and three core modules to instantiate where
        // the trivial component has one; decision 011).
        if matches!(job, BenchJob::Trivial) && (runs.is_empty() || runs.contains("sdk")) {
            let (throughput, _) =
                wasmjobs_run(store.clone(), BenchJob::Noop, n, batched, false, None, None).await;
            println!(
                "   the Rust SDK job (tests/guests/noop), batch submit → succeeded: {throughput:>9.0} jobs/s   ({:.0}% of the ceiling)",
                100.0 * throughput / ceiling,
            );
        }
        // WASMJOBS_BENCH_WATCH=1: the cost of being watched. The same runs, alternately
        // without and with the API serving on a socket beside the node, a scraper reading
        // GET /metrics every second and the dashboard's overview open (its GET /v1/stats every
        // 2 s, and the node's activity reports every 2 s that feed it); the median of each.
        if std::env::var_os("WASMJOBS_BENCH_WATCH").is_some() {
            for (shape, what) in [(single, "one job per submit"), (batched, "batch submit")] {
                let (mut plain, mut watched) = (Vec::new(), Vec::new());
                for _ in 0..3 {
                    plain.push(
                        wasmjobs_run(store.clone(), job, n, shape, false, None, None)
                            .await
                            .0,
                    );
                    watched.push(
                        wasmjobs_run(
                            store.clone(),
                            job,
                            n,
                            shape,
                            false,
                            Some(whole.clone()),
                            None,
                        )
                        .await
                        .0,
                    );
                }
                let median = |v: &mut Vec<f64>| {
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                };
                let (p, w) = (median(&mut plain), median(&mut watched));
                println!(
                    "   watched ({what}, {} slots): {w:>9.0} jobs/s against {p:>9.0} unwatched ({:+.1} %; medians of 3 alternate runs)",
                    shape.slots,
                    100.0 * (w - p) / p
                );
            }
        }
        // WASMJOBS_BENCH_WEBHOOK=1: the cost of a webhook subscribed to every job's end. The
        // same runs, alternately without and with one (`job.succeeded`, to a receiver in this
        // process that answers 200), the deliveries sent by the events dispatcher as
        // `wasmjobs serve` runs it; the medians, and the rate the deliveries kept.
        if std::env::var_os("WASMJOBS_BENCH_WEBHOOK").is_some() {
            let receiver = Receiver::start().await;
            for (shape, what) in [(single, "one job per submit"), (batched, "batch submit")] {
                let (mut plain, mut hooked, mut delivered) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..3 {
                    plain.push(
                        wasmjobs_run(store.clone(), job, n, shape, false, None, None)
                            .await
                            .0,
                    );
                    let (jobs, _, rate) =
                        wasmjobs_run_hooked(store.clone(), job, n, shape, &receiver).await;
                    hooked.push(jobs);
                    delivered.push(rate);
                }
                let median = |v: &mut Vec<f64>| {
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                };
                let (p, h, d) = (
                    median(&mut plain),
                    median(&mut hooked),
                    median(&mut delivered),
                );
                println!(
                    "   with a webhook on every end ({what}, {} slots): {h:>9.0} jobs/s against {p:>9.0} without ({:+.1} %); deliveries {d:>9.0}/s (medians of 3 alternate runs)",
                    shape.slots,
                    100.0 * (h - p) / p
                );
            }
        }
        relay.shutdown().await;
        if backend == "postgres" {
            // The runs' schema holds ~160,000 jobs: leave nothing behind on the shared server.
            if let Ok(pool) = sqlx::PgPool::connect(&url).await {
                let sizes: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT c.relname::text, pg_total_relation_size(c.oid)
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND c.relkind = 'r' AND pg_total_relation_size(c.oid) > 65536
                     ORDER BY 2 DESC",
                )
                .bind(bench_schema())
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
                let sizes: Vec<String> = sizes
                    .iter()
                    .map(|(t, b)| format!("{t} {:.1} MB", *b as f64 / 1e6))
                    .collect();
                println!(
                    "   (tables with their indexes at the end: {})",
                    sizes.join(", ")
                );
                if std::env::var_os("WASMJOBS_BENCH_KEEP_SCHEMA").is_some() {
                    println!("   (kept the schema {} for a look)", bench_schema());
                    continue;
                }
                let drop = format!("DROP SCHEMA IF EXISTS {} CASCADE", bench_schema());
                if let Err(e) = pool.execute(sqlx::AssertSqlSafe(drop)).await {
                    println!("   (could not drop the bench schema: {e})");
                }
            }
        }
    }
    println!();
    println!(
        "peak RSS of this process: {:.1} MiB",
        peak_rss() as f64 / (1 << 20) as f64
    );
}

async fn open(backend: &str, url: &str) -> Arc<dyn Backend> {
    match backend {
        "sqlite" => {
            let path = format!("{url}.wasmjobs");
            wasmjobs::store::open(&path).await.expect("sqlite store")
        }
        _ => wasmjobs::store::open_postgres_schema(url, &bench_schema())
            .await
            .expect("postgres store"),
    }
}

/// The Postgres schema of this run's store.
fn bench_schema() -> String {
    format!("bench_{}", std::process::id())
}

/// Insert N rows, claim them, complete them: one transaction per batch of 1,000, no events, no
/// attempts table, no sandbox. The most a queue on this database can do.
async fn raw_ceiling(backend: &str, url: &str, n: usize, _dir: &std::path::Path) -> f64 {
    const BATCH: usize = 1000;
    let start;
    match backend {
        "sqlite" => {
            // rusqlite on this thread, as the store runs it (decision 005): the fastest way to
            // drive SQLite from Rust, so the ceiling is SQLite's own.
            let path = format!("{url}.raw");
            let mut db = rusqlite::Connection::open(&path).expect("sqlite");
            db.pragma_update(None, "journal_mode", "WAL").expect("wal");
            db.pragma_update(None, "synchronous", "NORMAL")
                .expect("normal");
            db.execute_batch("CREATE TABLE raw (id INTEGER PRIMARY KEY, state TEXT NOT NULL, input BLOB, output BLOB)")
                .expect("create");
            start = Instant::now();
            for chunk in 0..n.div_ceil(BATCH) {
                let tx = db.transaction().expect("tx");
                {
                    let mut insert = tx
                        .prepare_cached("INSERT INTO raw (state, input) VALUES ('queued', ?)")
                        .expect("prepare");
                    for _ in 0..BATCH.min(n - chunk * BATCH) {
                        insert.execute([&b"{}"[..]]).expect("insert");
                    }
                }
                tx.commit().expect("commit");
            }
            loop {
                let tx = db.transaction().expect("tx");
                let ids: Vec<i64> = tx
                    .prepare_cached(
                        "UPDATE raw SET state = 'running' WHERE id IN (SELECT id FROM raw WHERE state = 'queued' LIMIT ?) RETURNING id",
                    )
                    .expect("prepare")
                    .query_map([BATCH as i64], |r| r.get(0))
                    .expect("claim")
                    .collect::<Result<_, _>>()
                    .expect("claim");
                tx.commit().expect("commit");
                if ids.is_empty() {
                    break;
                }
                let tx = db.transaction().expect("tx");
                {
                    let mut complete = tx
                        .prepare_cached(
                            "UPDATE raw SET state = 'succeeded', output = ? WHERE id = ?",
                        )
                        .expect("prepare");
                    for id in ids {
                        complete
                            .execute(rusqlite::params![&b"{}"[..], id])
                            .expect("complete");
                    }
                }
                tx.commit().expect("commit");
            }
        }
        _ => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(url)
                .await
                .expect("postgres");
            let table = format!("raw_bench_{}", std::process::id());
            pool.execute(sqlx::AssertSqlSafe(format!("CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, state TEXT NOT NULL, input BYTEA, output BYTEA)"))).await.expect("create");
            start = Instant::now();
            for chunk in 0..n.div_ceil(BATCH) {
                let k = BATCH.min(n - chunk * BATCH) as i64;
                sqlx::query(sqlx::AssertSqlSafe(format!("INSERT INTO {table} (state, input) SELECT 'queued', '\\x7b7d'::bytea FROM generate_series(1, $1)")))
                    .bind(k)
                    .execute(&pool)
                    .await
                    .expect("insert");
            }
            loop {
                let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "UPDATE {table} SET state = 'running' WHERE id IN (SELECT id FROM {table} WHERE state = 'queued' LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id"
                )))
                .bind(BATCH as i64)
                .fetch_all(&pool)
                .await
                .expect("claim");
                if ids.is_empty() {
                    break;
                }
                sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE {table} SET state = 'succeeded', output = '\\x7b7d'::bytea WHERE id = ANY($1)")))
                    .bind(&ids)
                    .execute(&pool)
                    .await
                    .expect("complete");
            }
            let elapsed = start.elapsed();
            pool.execute(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
                .await
                .expect("drop");
            return n as f64 / elapsed.as_secs_f64();
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// How the throughput run submits and runs its jobs.
#[derive(Clone, Copy)]
struct Shape {
    /// Jobs per `submit_many` call (1: one `submit` per job), from each of 64 submitters.
    batch: usize,
    /// The node's slots (attempts at once, and so the most jobs one claim takes).
    slots: usize,
}

/// Throughput of N jobs of `job` submitted as `shape` says; with `latency`, then latency at
/// 500 jobs/s. Returns (jobs/s, (p50, p99, max) ms).
async fn wasmjobs_run(
    store: Arc<dyn Store>,
    job: BenchJob,
    n: usize,
    shape: Shape,
    latency: bool,
    watch: Option<Arc<dyn Backend>>,
    hook: Option<&Receiver>,
) -> (f64, Option<(f64, f64, f64)>) {
    let (sandbox, modules) = wasmjobs_tests::install_component(
        store.as_ref(),
        job.bytes(),
        JOB_NAME,
        shape.slots.max(256) as u32,
    )
    .await;
    let service = JobService::new(store.clone(), AdmissionPolicy::default());
    let watcher = match watch {
        Some(backend) => Some(Watcher::start(&service, backend, &sandbox, &modules).await),
        None => None,
    };
    let defaults = NodeConfig::default();
    let node = Node::start(
        service.clone(),
        None,
        sandbox,
        modules,
        NodeConfig {
            concurrency: shape.slots,
            maintenance: false,
            claim_batch: env_number("WASMJOBS_BENCH_CLAIM_BATCH", defaults.claim_batch as usize)
                as u32,
            claim_ahead: env_number("WASMJOBS_BENCH_CLAIM_AHEAD", defaults.claim_ahead),
            ..defaults
        },
    );
    // A webhook on every job's end, and the dispatcher that sends its deliveries.
    let hooked = match hook {
        Some(receiver) => {
            let mut h = receiver.subscribe(&store).await;
            h.expect = receiver.calls.load(std::sync::atomic::Ordering::Relaxed) + n;
            Some(h)
        }
        None => None,
    };
    let before = count_succeeded(&*store).await;
    // Every job of this run gets a larger id than any job stored before it; only their ends
    // count.
    let newest_before = store
        .list_jobs(&JobFilter {
            limit: 1,
            ..JobFilter::default()
        })
        .await
        .expect("list")
        .first()
        .map_or(0, |j| j.id);

    // Throughput: submit N with 64 concurrent submitters, wait for all to succeed. The wait
    // counts the store's end notices rather than polling the database, which would compete
    // with the run it measures (on Postgres the poll was a visible share of the server's CPU).
    // They are counted as they come, beside the submitters: counted only once every job was
    // accepted, the store's notice channel (4,096) would long have overflowed. A job's end is
    // announced after the transaction that ended it committed, so the clock stops when the
    // last of this run's jobs is stored as ended.
    let ends = store.subscribe();
    let cpu_before = cpu_seconds();
    let start = Instant::now();
    let counted = tokio::spawn(count_ends(ends, newest_before, n));
    let submitters: Vec<_> = (0..64)
        .map(|k| {
            let service = service.clone();
            tokio::spawn(async move {
                let mine: Vec<usize> = (k..n).step_by(64).collect();
                for chunk in mine.chunks(shape.batch) {
                    let reqs: Vec<SubmitJob> = chunk
                        .iter()
                        .map(|i| SubmitJob {
                            module: JOB_NAME.into(),
                            input: Some(serde_json::json!(i)),
                            concurrency_key: bench_key(*i),
                            ..SubmitJob::default()
                        })
                        .collect();
                    if shape.batch == 1 {
                        for req in reqs {
                            service
                                .submit(req, &wasmjobs::caller::Caller::local_admin())
                                .await
                                .expect("submit");
                        }
                    } else {
                        for r in service
                            .submit_many(reqs, &wasmjobs::caller::Caller::local_admin())
                            .await
                        {
                            r.expect("submit");
                        }
                    }
                }
            })
        })
        .collect();
    for s in submitters {
        s.await.expect("submitter");
    }
    let submitted = start.elapsed();
    let all_counted = counted.await.expect("counting ends");
    if !all_counted {
        // The receiver lagged and some ends went unseen: the store tells.
        wait_nothing_left(&*store).await;
    }
    let elapsed = start.elapsed();
    let cpu_after = cpu_seconds();
    // Outside the measured time: every job is there and succeeded (a count is a scan of the
    // whole jobs table, ~35 ms on Postgres here; polled inside the window it was ~5 µs of the
    // server's CPU per job).
    wait_succeeded(&*store, before + n).await;
    println!(
        "   (all {n} accepted after {:.2} s, all succeeded after {:.2} s{})",
        submitted.as_secs_f64(),
        elapsed.as_secs_f64(),
        if all_counted {
            ""
        } else {
            "; end notices were missed, so the end was found by polling the store"
        }
    );
    let throughput = n as f64 / elapsed.as_secs_f64();
    let per_job = |before: f64, after: f64| (after - before) * 1e6 / n as f64;
    let server = per_job(cpu_before.1, cpu_after.1);
    println!(
        "   (CPU per job: this process {:.0} µs{}; {:.0} µs of the machine's cores per job at this rate)",
        per_job(cpu_before.0, cpu_after.0),
        if server > 0.0 {
            format!(", the Postgres server {server:.0} µs")
        } else {
            String::new()
        },
        std::thread::available_parallelism().map_or(1, |c| c.get()) as f64 * 1e6 / throughput
    );
    if let (Some(receiver), Some(hooked)) = (hook, hooked) {
        // Every end delivered: the rate is the run's jobs over the time from the first
        // submit to the last delivery.
        if let Some(dispatcher) = hooked.dispatcher {
            receiver.wait(hooked.expect, Duration::from_secs(600)).await;
            let rate = n as f64 / start.elapsed().as_secs_f64();
            println!(
                "   (every end delivered to the webhook after {:.2} s: {rate:.0} deliveries/s)",
                start.elapsed().as_secs_f64()
            );
            receiver
                .last_rate
                .store(rate.to_bits(), std::sync::atomic::Ordering::SeqCst);
            dispatcher.shutdown().await;
        }
        store
            .delete_webhook(hooked.webhook)
            .await
            .expect("delete the webhook");
    }
    if !latency {
        node.shutdown().await;
        if let Some(w) = watcher {
            w.stop().await;
        }
        return (throughput, None);
    }

    // Latency at a steady 500 jobs/s for 10 s (2 s with --quick sized N): from just before the
    // submit to the store announcing the job's end (`Notice::Ended`), on the monotonic clock.
    let count = (n / 10).clamp(1000, 5000);
    let mut notices = store.subscribe();
    let (expect_tx, mut expect_rx) = tokio::sync::oneshot::channel::<Vec<i64>>();
    let ended = tokio::spawn(async move {
        // Every end announced, until the submitted jobs are known and have all ended.
        let mut at = std::collections::HashMap::new();
        let mut expected: Option<Vec<i64>> = None;
        loop {
            if let Some(ids) = &expected
                && ids.iter().all(|id| at.contains_key(id))
            {
                return at;
            }
            tokio::select! {
                ids = &mut expect_rx, if expected.is_none() => {
                    expected = Some(ids.expect("the submitted ids"));
                }
                notice = notices.recv() => match notice {
                    Ok(Notice::Ended(id)) => {
                        at.insert(id, Instant::now());
                    }
                    Ok(_) => {}
                    Err(e) => panic!("missed notices while measuring latency: {e}"),
                },
            }
        }
    });
    let mut ticker = tokio::time::interval(Duration::from_millis(2));
    let mut ids = Vec::with_capacity(count);
    let mut stored = Vec::with_capacity(count);
    for i in 0..count {
        ticker.tick().await;
        let req = SubmitJob {
            module: JOB_NAME.into(),
            input: Some(serde_json::json!(i)),
            ..SubmitJob::default()
        };
        let submitted = Instant::now();
        let (job, _) = service
            .submit(req, &wasmjobs::caller::Caller::local_admin())
            .await
            .expect("submit");
        ids.push((job.id, submitted));
        stored.push(submitted.elapsed().as_secs_f64() * 1e3);
    }
    let _ = expect_tx.send(ids.iter().map(|(id, _)| *id).collect());
    wait_succeeded(&*store, before + n + count).await;
    let ended = ended.await.expect("latency task");
    let mut lat: Vec<f64> = ids
        .iter()
        .map(|(id, submitted)| {
            let end = ended.get(id).expect("every job announced its end");
            end.duration_since(*submitted).as_secs_f64() * 1e3
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    stored.sort_by(f64::total_cmp);
    println!(
        "   (of which submit → stored: p50 {:.2} ms, p99 {:.2} ms)",
        percentile(&stored, 0.50),
        percentile(&stored, 0.99)
    );
    node.shutdown().await;
    if let Some(w) = watcher {
        w.stop().await;
    }
    (
        throughput,
        Some((
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            percentile(&lat, 1.0),
        )),
    )
}

/// What watching a server costs it: its API on a loopback socket, a Prometheus scraper on
/// `GET /metrics` every second, the dashboard's overview polling `GET /v1/stats` every 2 s (what
/// the open page asks), and the activity reports that `serve` sends every 2 s.
struct Watcher {
    server: tokio::task::JoinHandle<()>,
    scraper: tokio::task::JoinHandle<()>,
    reporter: wasmjobs::activity::Reporter,
    scrapes: Arc<std::sync::atomic::AtomicU64>,
}

impl Watcher {
    async fn start(
        service: &JobService,
        backend: Arc<dyn Backend>,
        sandbox: &wasmjobs_host::Sandbox,
        modules: &wasmjobs::scheduler::ModuleCache,
    ) -> Watcher {
        let workflows = wasmjobs::workflow::WorkflowService::new(service.clone(), backend.clone());
        let state = wasmjobs::http::AppState::new(
            service.clone(),
            workflows,
            sandbox.clone(),
            modules.clone(),
            wasmjobs::http::ApiConfig::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, wasmjobs::http::app(state)).await;
        });
        let reporter = wasmjobs::activity::Reporter::start(backend, "bench".into());
        let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = scrapes.clone();
        let scraper = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for k in 0u64.. {
                tick.tick().await;
                let mut paths = vec!["/metrics"];
                if k % 2 == 0 {
                    paths.push("/v1/stats");
                }
                for path in paths {
                    if let Ok(r) = http.get(format!("{url}{path}")).send().await
                        && r.status().is_success()
                        && r.bytes().await.is_ok()
                    {
                        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        });
        Watcher {
            server,
            scraper,
            reporter,
            scrapes,
        }
    }

    async fn stop(self) {
        self.scraper.abort();
        self.server.abort();
        self.reporter.shutdown().await;
        assert!(
            self.scrapes.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "the watcher never read the API"
        );
    }
}

/// The `p` quantile (0.0–1.0) of `sorted`, which is sorted and not empty.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// `name` as a number, or `default`.
fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(1)
}

/// How many of `counts` (from `Store::count_by_state`) are in `state`.
fn count_in(counts: &[(JobState, u64)], state: JobState) -> usize {
    counts
        .iter()
        .filter(|(s, _)| *s == state)
        .map(|(_, c)| *c as usize)
        .sum()
}

/// The number of jobs in state `succeeded`.
async fn count_succeeded(store: &dyn Store) -> usize {
    count_in(
        &store.count_by_state().await.expect("count"),
        JobState::Succeeded,
    )
}

/// Waits for the end notices of `n` distinct jobs newer than `newest_before`; false when some
/// were missed (the receiver lagged), and the database has to tell.
/// A webhook receiver in this process: answers 200 to every call and counts them.
struct Receiver {
    url: String,
    calls: Arc<std::sync::atomic::AtomicUsize>,
    /// The deliveries' rate of the last hooked run (f64 bits).
    last_rate: std::sync::atomic::AtomicU64,
}

/// A webhook subscribed for one run.
struct Hooked {
    webhook: i64,
    /// None with `WASMJOBS_BENCH_WEBHOOK=outbox`: the events wait in the outbox.
    dispatcher: Option<wasmjobs::events::Dispatcher>,
    /// The receiver's count once every end of the run is delivered.
    expect: usize,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let app = axum::Router::new().fallback(axum::routing::post(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { axum::http::StatusCode::OK }
        }));
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url,
            calls,
            last_rate: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Subscribes a webhook to every job's end and starts a dispatcher.
    async fn subscribe(&self, store: &Arc<dyn Store>) -> Hooked {
        let webhook = store
            .create_webhook(
                wasmjobs::store::events::NewWebhook {
                    url: self.url.clone(),
                    events: vec!["job.succeeded".into()],
                    module: None,
                    workflow: None,
                    queue: None,
                    description: None,
                    include_output: false,
                    secret: wasmjobs::events::new_secret().expect("secret"),
                },
                wasmjobs::store::now_ms(),
            )
            .await
            .expect("webhook")
            .id;
        let dispatcher =
            (std::env::var("WASMJOBS_BENCH_WEBHOOK").as_deref() != Ok("outbox")).then(|| {
                wasmjobs::events::Dispatcher::start(
                    store.clone(),
                    wasmjobs::events::WebhookSettings {
                        allow_private_targets: true,
                        ..Default::default()
                    },
                    None,
                )
                .expect("dispatcher")
            });
        Hooked {
            webhook,
            dispatcher,
            expect: 0,
        }
    }

    async fn wait(&self, expect: usize, within: Duration) {
        let until = Instant::now() + within;
        while self.calls.load(std::sync::atomic::Ordering::Relaxed) < expect {
            assert!(Instant::now() < until, "the deliveries did not keep up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// [`wasmjobs_run`] with a webhook on every end: (jobs/s, _, deliveries/s).
async fn wasmjobs_run_hooked(
    store: Arc<dyn Store>,
    job: BenchJob,
    n: usize,
    shape: Shape,
    receiver: &Receiver,
) -> (f64, (), f64) {
    let (jobs, _) = wasmjobs_run(store, job, n, shape, false, None, Some(receiver)).await;
    let rate = f64::from_bits(receiver.last_rate.load(std::sync::atomic::Ordering::SeqCst));
    (jobs, (), rate)
}

async fn count_ends(
    mut ends: tokio::sync::broadcast::Receiver<Notice>,
    newest_before: i64,
    n: usize,
) -> bool {
    let mut ended = std::collections::HashSet::with_capacity(n);
    while ended.len() < n {
        match ends.recv().await {
            Ok(Notice::Ended(id)) if id > newest_before => {
                ended.insert(id);
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Waits until no job is waiting or running: every job submitted (all were accepted before
/// this is called) has ended. Looks through the queue and the running set, not at every job.
async fn wait_nothing_left(store: &dyn Store) {
    'poll: loop {
        // Running first: while the run goes on, that one look answers.
        for state in [JobState::Running, JobState::Queued, JobState::Scheduled] {
            let filter = JobFilter {
                state: Some(state),
                limit: 1,
                ..JobFilter::default()
            };
            if !store.list_jobs(&filter).await.expect("list").is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue 'poll;
            }
        }
        return;
    }
}

async fn wait_succeeded(store: &dyn Store, n: usize) {
    loop {
        let counts = store.count_by_state().await.expect("count");
        assert_eq!(
            count_in(&counts, JobState::Failed),
            0,
            "jobs failed during the benchmark"
        );
        if count_in(&counts, JobState::Succeeded) >= n {
            return;
        }
        // Counting is a scan of the jobs table: poll gently, or the poll itself becomes a
        // good part of the database's load (it was, at 5 ms, on Postgres).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU seconds used so far by this process and by the processes named `postgres` (the local
/// server's backends, and through the postmaster's count of its reaped children those that
/// exited: without it a backend exiting within a phase made its CPU come out negative), from
/// `/proc` (USER_HZ = 100).
fn cpu_seconds() -> (f64, f64) {
    /// utime + stime, and with `children` also cutime + cstime (the 12th to 15th fields after
    /// the command's closing parenthesis).
    fn ticks(stat: &str, children: bool) -> Option<u64> {
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(4)
            .map(|v| v.parse().ok())
            .collect::<Option<_>>()?;
        let n = if children { 4 } else { 2 };
        Some(f.get(..n)?.iter().sum())
    }
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| ticks(&s, false))
        .unwrap_or(0);
    let mut server = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if stat.contains("(postgres)") {
            server += ticks(&stat, true).unwrap_or(0);
        }
    }
    (own as f64 / 100.0, server as f64 / 100.0)
}

fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
