//! The store conformance suite: the same checks against SQLite and (when
//! `WASMJOBS_TEST_POSTGRES` is set) Postgres, a file per area; the helpers they share.

use serde_json::json;
use wasmjobs::store::*;
use wasmjobs_host::{Grants, Limits, Outcome};
use wasmjobs_tests::test_stores;

mod backends;
mod jobs;
mod listing;
mod queue;
mod rescue;

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
        priority: 0,
        run_at: None,
        idempotency_key: None,
        deadline_at: None,
        workflow_ref: None,
        input_from: None,
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
        events: vec![NewEvent {
            kind: "log",
            data: json!({"message": "hi"}),
        }],
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
    let Some(url) = std::env::var("WASMJOBS_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty())
    else {
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
