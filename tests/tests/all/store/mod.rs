//! The store conformance suite: one [`exercise`] runs every case against a backend, each case
//! on a fresh store of its own; it is called for SQLite and (when `WASMJOBS_TEST_POSTGRES` is
//! set) Postgres. The cases are in a file per area; what only one backend has is tested
//! beside them on its own.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::json;
use wasmjobs::store::*;
use wasmjobs_host::{Grants, Limits, Outcome};

mod backends;
mod jobs;
mod keys;
mod listing;
mod queue;
mod queues;
mod rescue;

/// A conformance case: checks one backend's store, given fresh.
type Case = fn(&'static str, Arc<dyn Backend>) -> BoxFuture<'static, ()>;

macro_rules! cases {
    ($($case:path),+ $(,)?) => {
        &[$((stringify!($case), |backend, store| -> BoxFuture<'static, ()> {
            Box::pin($case(backend, store))
        })),+]
    };
}

/// Every conformance case, by name.
const CASES: &[(&str, Case)] = cases![
    jobs::modules_are_content_addressed_and_named,
    jobs::lifecycle_with_retry_and_complete_history,
    jobs::an_attempt_never_starts_before_its_job_was_stored_nor_ends_before_it_started,
    jobs::awkward_worker_names_and_errors_come_back_exactly,
    jobs::jobs_read_back_their_own_settings_when_others_share_them,
    jobs::idempotency_key_returns_the_first_job,
    jobs::a_job_naming_an_unstored_module_is_refused_and_stores_nothing,
    jobs::an_insert_checked_against_moved_names_stores_nothing,
    listing::list_with_filters_and_cursor_then_prune,
    listing::list_by_every_state_and_prune_thousands,
    listing::schedules_fire_once_per_tick,
    listing::activity_reports_add_up_across_nodes,
    queue::cancels_retries_and_deadline_sweeps_never_go_back_before_the_jobs_last_transition,
    queue::claims_follow_priority_then_run_at_then_age,
    queue::a_claim_fails_jobs_past_their_deadline_and_queues_due_ones,
    queue::cancel_queued_at_once_and_running_by_request,
    queues::claims_share_a_nodes_slots_between_queues_by_weight,
    queues::a_paused_queue_keeps_its_jobs_until_it_is_resumed,
    queues::max_running_holds_across_claimers,
    queues::a_rate_limits_starts_with_a_bucket_kept_in_the_store,
    keys::a_key_runs_its_jobs_up_to_its_limit_in_order_and_blocks_no_other,
    keys::a_deadline_passed_hands_a_keys_place_on,
    keys::concurrent_claimers_never_hold_two_jobs_of_a_key,
    rescue::expired_leases_are_lost_attempts_and_requeued,
    rescue::a_job_whose_nodes_keep_dying_fails_after_max_lost,
    rescue::gone_nodes_jobs_are_rescued_at_once_and_released_jobs_are_not_charged,
    rescue::a_rerun_under_a_newer_claim_is_not_lost_with_the_older_claims_jobs,
    backends::concurrent_submitters_claimers_and_readers_lose_nothing,
];

/// Runs every case against `backend`, each on a fresh store (a new SQLite file, a new Postgres
/// schema), all of them even when one fails; then fails naming the cases that did (their
/// panics are printed above).
async fn exercise(backend: &'static str) {
    let mut failed = Vec::new();
    for (k, (name, case)) in CASES.iter().enumerate() {
        let (store, _db) = wasmjobs_tests::fresh_store(backend, &format!("c{k}")).await;
        // A task of its own, so that a case's panic is its failure, not the suite's.
        if let Err(e) = tokio::spawn(case(backend, store)).await {
            eprintln!("FAILED on {backend}: {name}: {e}");
            failed.push(*name);
        }
    }
    assert!(failed.is_empty(), "{backend}: cases failed: {failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_conforms() {
    exercise("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_conforms() {
    if wasmjobs_tests::postgres_url().is_none() {
        eprintln!("SKIPPED: postgres_store_conforms (set WASMJOBS_TEST_POSTGRES to run it)");
        return;
    }
    exercise("postgres").await;
}

pub(super) fn new_job(digest: &str) -> NewJob {
    NewJob {
        module_digest: digest.to_string(),
        input: b"{}".to_vec(),
        limits: Limits::default(),
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff_ms: 0,
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        grants: Grants::default(),
        queue: "default".into(),
        priority: 0,
        run_at: None,
        idempotency_key: None,
        deadline_at: None,
        workflow_ref: None,
        input_from: None,
        concurrency: None,
    }
}

/// The id of a [`new_job`] of `digest` inserted at `at`.
pub(super) async fn new_job_id(store: &dyn Store, digest: &str, at: i64) -> JobId {
    store
        .insert_job(new_job(digest), at)
        .await
        .expect("insert")
        .0
        .id
}

pub(super) async fn module(store: &dyn Store) -> String {
    let m = NewModule {
        digest: "sha256:abc".into(),
        world: "wasmjobs:job/job".into(),
        imports: vec!["wasmjobs:job/io@0.1.0".into()],
        bytes: b"\0asm".to_vec(),
        name: Some("demo".into()),
        owner: None,
        may_move: true,
    };
    store.put_module(m, 1).await.expect("put module").0.digest
}

pub(super) fn done(c: &Claimed, worker: &str, outcome: Outcome) -> Completion {
    Completion {
        job_id: c.id,
        attempt: c.attempt,
        worker: worker.into(),
        outcome,
        trap: None,
        error: (outcome != Outcome::Succeeded).then(|| "boom".to_string()),
        output: b"out".to_vec(),
        fuel_consumed: 10,
        peak_memory_bytes: 65536,
        wall_time_us: 5,
        ended_at: 0,
        submitted_at: None,
        events: vec![NewEvent {
            kind: "log",
            data: json!({"message": "hi"}),
        }],
        permanent: false,
        keyed: c.keyed,
    }
}

/// An attempt as (number, worker, outcome, started, finished).
type AttemptView = (u32, String, Option<Outcome>, i64, Option<i64>);

/// A job's attempts as [`AttemptView`]s.
pub(super) async fn attempt_view(store: &dyn Store, id: JobId) -> Vec<AttemptView> {
    let attempts = store.attempts(id).await.expect("attempts");
    attempts
        .into_iter()
        .map(|a| (a.attempt, a.worker, a.outcome, a.started_at, a.finished_at))
        .collect()
}

/// For a Postgres-only test: the server's URL, the schema `t_<tag>_<pid>` (dropped if this
/// process left it; those of test processes that are gone are dropped too) and a pool on the
/// server. `None`, said loudly, without `WASMJOBS_TEST_POSTGRES`.
pub(crate) async fn postgres_only(test: &str, tag: &str) -> Option<(String, String, sqlx::PgPool)> {
    use sqlx::Executor;
    let Some(url) = wasmjobs_tests::postgres_url() else {
        eprintln!("SKIPPED: {test} (set WASMJOBS_TEST_POSTGRES to run it)");
        return None;
    };
    wasmjobs_tests::drop_stale_schemas(&url, tag).await;
    let schema = format!("t_{tag}_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&url).await.expect("connect");
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE"
        )))
        .await
        .expect("drop the schema");
    Some((url, schema, admin))
}

/// A job's state events: each state and its time.
pub(super) async fn state_times(store: &dyn Store, id: i64) -> Vec<(String, i64)> {
    let events = store.events(id, 0, 100).await.expect("events");
    events
        .iter()
        .filter(|e| e.kind == "state")
        .map(|e| (e.data["state"].as_str().unwrap_or("").to_string(), e.at))
        .collect()
}
