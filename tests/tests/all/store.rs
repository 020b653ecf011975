//! The store conformance suite: the same checks against SQLite and (when
//! `WASMJOBS_TEST_POSTGRES` is set) Postgres.

use serde_json::json;
use wasmjobs::store::*;
use wasmjobs_host::{Grants, Limits, Outcome};
use wasmjobs_tests::test_stores;

fn new_job(digest: &str) -> NewJob {
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
async fn new_job_id(store: &dyn Store, digest: &str, at: i64) -> JobId {
    store
        .insert_job(new_job(digest), at)
        .await
        .expect("insert")
        .0
        .id
}

async fn module(store: &dyn Store) -> String {
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

fn done(c: &Claimed, worker: &str, outcome: Outcome) -> Completion {
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
async fn attempt_view(store: &dyn Store, id: JobId) -> Vec<AttemptView> {
    let attempts = store.attempts(id).await.expect("attempts");
    attempts
        .into_iter()
        .map(|a| (a.attempt, a.worker, a.outcome, a.started_at, a.finished_at))
        .collect()
}

/// For a Postgres-only test: the server's URL, the schema `t_<tag>_<pid>` (dropped if this
/// process left it; those of test processes that are gone are dropped too) and a pool on the
/// server. `None`, said loudly, without `WASMJOBS_TEST_POSTGRES`.
async fn postgres_only(test: &str, tag: &str) -> Option<(String, String, sqlx::PgPool)> {
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

#[tokio::test]
async fn modules_are_content_addressed_and_named() {
    for (backend, store, _db) in test_stores("modules").await {
        let digest = module(&*store).await;
        let again = NewModule {
            digest: digest.clone(),
            world: "wasmjobs:job/job".into(),
            imports: vec![],
            bytes: b"\0asm".to_vec(),
            name: Some("other".into()),
            owner: None,
            may_move: true,
        };
        let (rec, created) = store.put_module(again, 2).await.expect("put");
        assert!(!created, "{backend}");
        assert_eq!(rec.names, ["demo", "other"], "{backend}");
        assert_eq!(
            store
                .get_module("demo")
                .await
                .expect("get")
                .map(|m| m.digest),
            Some(digest.clone())
        );
        assert_eq!(
            store
                .get_module(&digest)
                .await
                .expect("get")
                .map(|m| m.size),
            Some(4)
        );
        assert!(store.get_module("nope").await.expect("get").is_none());
        assert_eq!(
            store.module_bytes(&digest).await.expect("bytes").as_deref(),
            Some(&b"\0asm"[..])
        );
    }
}

#[tokio::test]
async fn lifecycle_with_retry_and_complete_history() {
    for (backend, store, _db) in test_stores("lifecycle").await {
        let digest = module(&*store).await;
        let (job, created) = store
            .insert_job(new_job(&digest), 10)
            .await
            .expect("insert");
        assert!(created);
        assert_eq!(job.state, JobState::Queued, "{backend}");

        let claimed = store.claim("w1", 10, 20, 1000).await.expect("claim");
        assert_eq!(claimed.len(), 1, "{backend}");
        assert_eq!(claimed[0].attempt, 1);
        // The running attempt shows, with its worker and start, and no outcome yet.
        assert_eq!(
            attempt_view(&*store, job.id).await,
            [(1, "w1".to_string(), None, 20, None)],
            "{backend}"
        );
        assert!(
            store
                .claim("w2", 10, 21, 1000)
                .await
                .expect("claim")
                .is_empty(),
            "{backend}: claimed twice"
        );

        let r = store
            .complete(&[done(&claimed[0], "w1", Outcome::Trapped)], 30)
            .await
            .expect("complete");
        assert_eq!(r, [Completed::Applied(JobState::Scheduled)], "{backend}");
        let again = store.claim("w2", 10, 40, 1000).await.expect("claim");
        assert_eq!(again.len(), 1, "{backend}");
        assert_eq!(again[0].attempt, 2);
        // A late completion from the first worker is refused.
        let late = store
            .complete(&[done(&claimed[0], "w1", Outcome::Succeeded)], 41)
            .await
            .expect("complete");
        assert_eq!(late, [Completed::Refused], "{backend}");
        let r = store
            .complete(&[done(&again[0], "w2", Outcome::Succeeded)], 50)
            .await
            .expect("complete");
        assert_eq!(r, [Completed::Applied(JobState::Succeeded)], "{backend}");

        let job = store.get_job(job.id).await.expect("get").expect("exists");
        assert_eq!(
            (job.state, job.attempts, job.output.as_deref()),
            (JobState::Succeeded, 2, Some(&b"out"[..]))
        );
        let attempts = store.attempts(job.id).await.expect("attempts");
        let view: Vec<_> = attempts
            .iter()
            .map(|a| {
                (
                    a.attempt,
                    a.worker.as_str(),
                    a.outcome,
                    a.started_at,
                    a.finished_at,
                    a.fuel_consumed,
                )
            })
            .collect();
        assert_eq!(
            view,
            [
                (1, "w1", Some(Outcome::Trapped), 20, Some(30), Some(10)),
                (2, "w2", Some(Outcome::Succeeded), 40, Some(50), Some(10)),
            ],
            "{backend}"
        );
        let events = store.events(job.id, 0, 100).await.expect("events");
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=events.len() as i64).collect::<Vec<_>>(),
            "{backend}: gapless"
        );
        let states: Vec<String> = events
            .iter()
            .filter(|e| e.kind == "state")
            .map(|e| e.data["state"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(
            states,
            [
                "queued",
                "running",
                "scheduled",
                "queued",
                "running",
                "succeeded"
            ],
            "{backend}"
        );
        assert_eq!(
            store
                .events(job.id, 3, 100)
                .await
                .expect("events")
                .first()
                .map(|e| e.seq),
            Some(4)
        );
    }
}

/// A node's clock reading can be a little behind the time a job was stored with: its claim
/// statement took `now` before another task (or node) stored the job. The attempt still starts
/// no earlier than the job was created, ends no earlier than it started, and the job's history
/// reads forward in time.
#[tokio::test]
async fn an_attempt_never_starts_before_its_job_was_stored_nor_ends_before_it_started() {
    for (backend, store, _db) in test_stores("clock").await {
        let digest = module(&*store).await;
        let mut retried = new_job(&digest);
        retried.retry.max_attempts = 2;
        let (job, _) = store.insert_job(retried, 100).await.expect("insert");
        // Claimed with a reading 10 ms behind the insert's, ended with one 5 ms behind.
        let claimed = store.claim("w1", 10, 90, 1000).await.expect("claim");
        assert_eq!(claimed.len(), 1, "{backend}");
        assert_eq!(
            attempt_view(&*store, job.id).await,
            [(1, "w1".to_string(), None, 100, None)],
            "{backend}: the running attempt starts when its job was stored"
        );
        store
            .complete(&[done(&claimed[0], "w1", Outcome::Trapped)], 95)
            .await
            .expect("complete");
        // The retry (due at once, at 100 as the first ending was clamped): claimed when due,
        // ended by a node whose clock is 15 ms behind.
        let again = store.claim("w2", 10, 100, 1000).await.expect("claim");
        assert_eq!(again.len(), 1, "{backend}");
        store
            .complete(&[done(&again[0], "w2", Outcome::Succeeded)], 85)
            .await
            .expect("complete");

        assert_eq!(
            attempt_view(&*store, job.id).await,
            [
                (1, "w1".to_string(), Some(Outcome::Trapped), 100, Some(100)),
                (
                    2,
                    "w2".to_string(),
                    Some(Outcome::Succeeded),
                    100,
                    Some(100)
                ),
            ],
            "{backend}"
        );
        let job = store.get_job(job.id).await.expect("get").expect("exists");
        assert_eq!(job.state, JobState::Succeeded, "{backend}");
        assert!(
            job.finished_at >= Some(job.created_at) && job.updated_at >= job.created_at,
            "{backend}: finished {:?}, updated {}, created {}",
            job.finished_at,
            job.updated_at,
            job.created_at
        );
        let times = state_times(&*store, job.id).await;
        assert!(
            times.windows(2).all(|w| w[0].1 <= w[1].1) && times.iter().all(|(_, at)| *at >= 100),
            "{backend}: the history goes back in time: {times:?}"
        );
    }
}

/// A worker name and an error text with quotes, backslashes, tabs, newlines and non-ASCII come
/// back exactly, in the `running` event and in the ended attempt: both are lines in the job's
/// row on Postgres, built as text (a raw tab or newline would split them).
#[tokio::test]
async fn awkward_worker_names_and_errors_come_back_exactly() {
    for (backend, store, _db) in test_stores("awkward_text").await {
        let digest = module(&*store).await;
        let (job, _) = store
            .insert_job(new_job(&digest), 10)
            .await
            .expect("insert");
        let worker = "node \"a\"\tb\\c\nd ü";
        let claimed = store.claim(worker, 10, 20, 1000).await.expect("claim");
        assert_eq!(claimed.len(), 1, "{backend}");
        let mut c = done(&claimed[0], worker, Outcome::Trapped);
        c.trap = Some("unreachable \"x\"".into());
        c.error = Some("line 1\nline\t2 \\ \"quoted\" é\u{1}".into());
        c.fuel_consumed = u64::MAX;
        c.peak_memory_bytes = 1 << 40;
        c.wall_time_us = 7;
        let r = store.complete(&[c.clone()], 30).await.expect("complete");
        assert_eq!(r, [Completed::Applied(JobState::Scheduled)], "{backend}");

        let attempts = store.attempts(job.id).await.expect("attempts");
        let a = attempts.first().expect("one attempt");
        assert_eq!(
            (
                a.worker.as_str(),
                a.outcome,
                a.trap.as_deref(),
                a.error.as_deref(),
                a.fuel_consumed,
                a.peak_memory_bytes,
                a.wall_time_us,
                a.started_at,
                a.finished_at,
            ),
            (
                worker,
                Some(Outcome::Trapped),
                c.trap.as_deref(),
                c.error.as_deref(),
                Some(i64::MAX as u64),
                Some(1 << 40),
                Some(7),
                20,
                Some(30),
            ),
            "{backend}"
        );
        let events = store.events(job.id, 0, 100).await.expect("events");
        let running: Vec<_> = events
            .iter()
            .filter(|e| e.kind == "state" && e.data["state"] == "running")
            .map(|e| e.data.clone())
            .collect();
        assert_eq!(
            running,
            [json!({"attempt": 1, "state": "running", "worker": worker})],
            "{backend}"
        );
    }
}

/// Jobs submitted together with the same limits, retry policy and grants, and one with others:
/// each job runs and reads back with its own, and a hand `retry` of one changes no other's
/// (both backends keep shared settings once).
#[tokio::test]
async fn jobs_read_back_their_own_settings_when_others_share_them() {
    for (backend, store, _db) in test_stores("settings").await {
        let digest = module(&*store).await;
        let mut a = new_job(&digest);
        a.limits.fuel = 123_456;
        a.retry.max_attempts = 1;
        a.grants.env.insert("TOKEN".into(), "s3cret".into());
        let mut b = new_job(&digest);
        b.limits.fuel = 654_321;
        b.priority = -1;
        let jobs = store
            .insert_jobs(vec![a.clone(), a.clone(), b.clone(), a.clone()], 10)
            .await
            .expect("insert");
        let ids: Vec<JobId> = jobs.iter().map(|(j, _)| j.id).collect();
        for (id, want) in ids.iter().zip([&a, &a, &b, &a]) {
            let job = store.get_job(*id).await.expect("get").expect("stored");
            assert_eq!(
                (&job.limits, &job.retry, &job.grants),
                (&want.limits, &want.retry, &want.grants),
                "{backend}: job {id}"
            );
        }
        let claimed = store.claim("w", 10, 20, 1000).await.expect("claim");
        let seen: Vec<(JobId, u64, Option<&String>)> = claimed
            .iter()
            .map(|c| (c.id, c.limits.fuel, c.grants.env.get("TOKEN")))
            .collect();
        let token = "s3cret".to_string();
        assert_eq!(
            seen,
            [
                (ids[0], 123_456, Some(&token)),
                (ids[1], 123_456, Some(&token)),
                (ids[3], 123_456, Some(&token)),
                (ids[2], 654_321, None),
            ],
            "{backend}"
        );
        // The first job fails for good (one attempt), is retried by hand: its budget grows,
        // the job that shares its settings keeps its own.
        let r = store
            .complete(&[done(&claimed[0], "w", Outcome::Trapped)], 30)
            .await
            .expect("complete");
        assert_eq!(r, [Completed::Applied(JobState::Failed)], "{backend}");
        store.retry(ids[0], 40).await.expect("retry");
        let retried = store.get_job(ids[0]).await.expect("get").expect("stored");
        let other = store.get_job(ids[1]).await.expect("get").expect("stored");
        assert_eq!(
            (retried.retry.max_attempts, other.retry.max_attempts),
            (2, 1),
            "{backend}"
        );
        assert_eq!(
            (&retried.limits, &retried.grants),
            (&a.limits, &a.grants),
            "{backend}"
        );
        let again = store.claim("w", 10, 50, 1000).await.expect("claim");
        assert_eq!(
            again
                .iter()
                .map(|c| (c.id, c.attempt, c.limits.fuel))
                .collect::<Vec<_>>(),
            [(ids[0], 2, 123_456)],
            "{backend}"
        );
    }
}

/// Postgres keeps a job's settings once (their texts out of the jobs' rows), and retention
/// deletes them, and the secrets their grants hold, once no job refers to them and they went
/// unused for an hour past the retention age; a store that submitted with them before stores
/// them again.
#[tokio::test]
async fn postgres_settings_are_stored_once_and_pruned_when_unused() {
    let Some((url, schema, admin)) = postgres_only(
        "postgres_settings_are_stored_once_and_pruned_when_unused",
        "settings_pg",
    )
    .await
    else {
        return;
    };
    let store = open_postgres_schema(&url, &schema).await.expect("open");
    let digest = module(&*store).await;
    let hour = 3_600_000;
    let mut secret = new_job(&digest);
    secret.grants.env.insert("TOKEN".into(), "s3cret".into());
    let mut waiting = new_job(&digest);
    waiting.limits.fuel = 777;
    waiting.run_at = Some(100 * hour);
    let settings = || async {
        let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT grants, used_at FROM {schema}.job_settings ORDER BY grants"
        )))
        .fetch_all(&admin)
        .await
        .expect("settings");
        rows
    };
    store
        .insert_jobs(vec![secret.clone(); 3], 10)
        .await
        .expect("insert");
    let (waiting_job, _) = store.insert_job(waiting.clone(), 10).await.expect("insert");
    let inline: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.jobs
         WHERE settings NOT IN (SELECT key FROM {schema}.job_settings)"
    )))
    .fetch_one(&admin)
    .await
    .expect("count");
    assert_eq!(inline, 0, "every job refers to stored settings");
    let stored = settings().await;
    assert_eq!(stored.len(), 2, "one row per distinct settings: {stored:?}");
    assert!(stored.iter().any(|(g, _)| g.contains("s3cret")));

    // The secret jobs run and end; the waiting one stays.
    let claimed = store.claim("w", 10, 20, 1000).await.expect("claim");
    assert_eq!(claimed.len(), 3);
    let ends: Vec<Completion> = claimed
        .iter()
        .map(|c| done(c, "w", Outcome::Succeeded))
        .collect();
    store.complete(&ends, 30).await.expect("complete");

    // Retention at 40: the jobs go, but their settings were used at 10, not an hour before 40.
    assert_eq!(store.prune(40).await.expect("prune"), 3);
    assert_eq!(settings().await.len(), 2, "settings used lately stay");
    // Later: the unused one goes with its secret, the waiting job's stays however old.
    assert_eq!(store.prune(2 * hour).await.expect("prune"), 0);
    let left = settings().await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(!left[0].0.contains("s3cret"), "{left:?}");
    let w = store
        .get_job(waiting_job.id)
        .await
        .expect("get")
        .expect("waiting job");
    assert_eq!(w.limits.fuel, 777);

    // The same store submits with the pruned settings again, at a time when it trusts its own
    // touch of 10 (minutes before): the submission stores the settings again, and the job runs
    // with it.
    let (again, _) = store.insert_job(secret.clone(), 20).await.expect("insert");
    let claimed = store.claim("w", 10, 25, 1000).await.expect("claim");
    assert_eq!(
        claimed
            .iter()
            .map(|c| (c.id, c.grants.env.get("TOKEN").cloned()))
            .collect::<Vec<_>>(),
        [(again.id, Some("s3cret".to_string()))]
    );
    // A store that never saw the settings reads them to run a job.
    let fresh = open_postgres_schema(&url, &schema).await.expect("open");
    let (third, _) = fresh
        .insert_job(secret.clone(), 2 * hour + 3)
        .await
        .expect("insert");
    let other = open_postgres_schema(&url, &schema).await.expect("open");
    let claimed = other
        .claim("w2", 10, 2 * hour + 4, 1000)
        .await
        .expect("claim");
    assert_eq!(
        claimed
            .iter()
            .map(|c| (c.id, c.grants.env.get("TOKEN").cloned()))
            .collect::<Vec<_>>(),
        [(third.id, Some("s3cret".to_string()))]
    );
    let stored = settings().await;
    assert_eq!(stored.len(), 2, "{stored:?}");
}

/// A job's state events: each state and its time.
async fn state_times(store: &dyn Store, id: i64) -> Vec<(String, i64)> {
    let events = store.events(id, 0, 100).await.expect("events");
    events
        .iter()
        .filter(|e| e.kind == "state")
        .map(|e| (e.data["state"].as_str().unwrap_or("").to_string(), e.at))
        .collect()
}

#[tokio::test]
async fn cancels_retries_and_deadline_sweeps_never_go_back_before_the_jobs_last_transition() {
    for (backend, store, _db) in test_stores("clock2").await {
        let digest = module(&*store).await;
        // Stored at 100 with a deadline already past; a claim whose clock reads 90 fails it,
        // at 100.
        let (late, _) = store
            .insert_job(
                NewJob {
                    deadline_at: Some(50),
                    ..new_job(&digest)
                },
                100,
            )
            .await
            .expect("insert");
        let claimed = store.claim("w", 10, 90, 1000).await.expect("claim");
        assert!(
            claimed.is_empty(),
            "{backend}: a job past its deadline started"
        );
        let failed = store.get_job(late.id).await.expect("get").expect("exists");
        assert_eq!(failed.state, JobState::Failed, "{backend}");
        assert_eq!(
            (failed.finished_at, failed.updated_at),
            (Some(100), 100),
            "{backend}: failed before it was stored"
        );
        assert_eq!(
            state_times(&*store, late.id).await,
            [("queued".to_string(), 100), ("failed".to_string(), 100)],
            "{backend}"
        );

        // Stored at 300, cancelled by a clock 50 ms behind, retried by hand by one 60 behind.
        let (job, _) = store
            .insert_job(new_job(&digest), 300)
            .await
            .expect("insert");
        assert_eq!(
            store.cancel(job.id, 250).await.expect("cancel"),
            JobState::Cancelled,
            "{backend}"
        );
        let ended = store.get_job(job.id).await.expect("get").expect("exists");
        assert_eq!(
            (ended.finished_at, ended.updated_at),
            (Some(300), 300),
            "{backend}: cancelled before it was stored"
        );
        assert_eq!(
            store.retry(job.id, 240).await.expect("retry"),
            JobState::Queued,
            "{backend}"
        );
        let requeued = store.get_job(job.id).await.expect("get").expect("exists");
        assert_eq!(
            requeued.updated_at, 300,
            "{backend}: requeued before it was cancelled"
        );
        assert_eq!(
            state_times(&*store, job.id).await,
            [
                ("queued".to_string(), 300),
                ("cancelled".to_string(), 300),
                ("queued".to_string(), 300)
            ],
            "{backend}"
        );
    }
}

/// On Postgres a claim is a row of `claims` (its worker and job ids), which the rescuer and the
/// listing of running jobs read. A node deletes its claim's row once the claim's jobs have all
/// ended, with its next claim, so the table holds little more than what runs. A queue row is
/// only a pointer to a job: one left behind for a job that is no longer queued (a cancel that
/// raced a requeue can leave one) is dropped by the claim that finds it, and the job stays as
/// it is.
#[tokio::test]
async fn postgres_claims_are_deleted_once_their_jobs_end_and_stray_queue_rows_run_nothing() {
    use sqlx::Executor;
    let Some((url, schema, admin)) = postgres_only(
        "postgres_claims_are_deleted_once_their_jobs_end_and_stray_queue_rows_run_nothing",
        "claims",
    )
    .await
    else {
        return;
    };
    let store = open_postgres_schema(&url, &schema).await.expect("open");
    let digest = module(&*store).await;
    let claims = || async {
        let rows: Vec<(String, Vec<i64>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT worker, job_ids FROM {schema}.claims ORDER BY id"
        )))
        .fetch_all(&admin)
        .await
        .expect("claims");
        rows
    };
    let jobs = store
        .insert_jobs(vec![new_job(&digest); 3], 10)
        .await
        .expect("insert");
    let ids: Vec<JobId> = jobs.iter().map(|(j, _)| j.id).collect();
    let first = store.claim("w", 2, 20, 1000).await.expect("claim");
    assert_eq!(claims().await, [("w".to_string(), ids[..2].to_vec())]);
    store
        .complete(&[done(&first[0], "w", Outcome::Succeeded)], 30)
        .await
        .expect("complete");
    let second = store.claim("w", 2, 40, 1000).await.expect("claim");
    // One job of the first claim still runs: its row stays.
    assert_eq!(
        claims().await,
        [
            ("w".to_string(), ids[..2].to_vec()),
            ("w".to_string(), ids[2..].to_vec())
        ]
    );
    store
        .complete(
            &[
                done(&first[1], "w", Outcome::Succeeded),
                done(&second[0], "w", Outcome::Succeeded),
            ],
            50,
        )
        .await
        .expect("complete");
    assert!(
        store
            .claim("w", 2, 60, 1000)
            .await
            .expect("claim")
            .is_empty()
    );
    assert_eq!(claims().await, []);

    // A stray queue row for a job that ended (and one for a job cancelled) runs nothing.
    let (cancelled, _) = store
        .insert_job(new_job(&digest), 70)
        .await
        .expect("insert");
    assert_eq!(
        store.cancel(cancelled.id, 71).await.expect("cancel"),
        JobState::Cancelled
    );
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {schema}.job_queue (job_id, priority, run_at, deadline_at, ready)
             VALUES ({}, 0, 10, NULL, TRUE), ({}, 0, 70, NULL, TRUE)",
            ids[0], cancelled.id
        )))
        .await
        .expect("stray rows");
    assert!(
        store
            .claim("w", 10, 80, 1000)
            .await
            .expect("claim")
            .is_empty()
    );
    for (id, state) in [
        (ids[0], JobState::Succeeded),
        (cancelled.id, JobState::Cancelled),
    ] {
        let job = store.get_job(id).await.expect("get").expect("job");
        assert_eq!((job.state, job.attempts), (state, u32::from(id == ids[0])));
    }
    let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.job_queue"
    )))
    .fetch_one(&admin)
    .await
    .expect("queue");
    assert_eq!(left, 0, "the claim took the stray rows off the queue");
    drop(store);
    let _ = admin
        .execute(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .await;
}

#[tokio::test]
async fn claims_follow_priority_then_run_at_then_age() {
    for (backend, store, _db) in test_stores("priority").await {
        let digest = module(&*store).await;
        let low = new_job_id(&*store, &digest, 1).await;
        let high = store
            .insert_job(
                NewJob {
                    priority: 5,
                    ..new_job(&digest)
                },
                2,
            )
            .await
            .expect("insert")
            .0
            .id;
        let later = store
            .insert_job(
                NewJob {
                    run_at: Some(1000),
                    ..new_job(&digest)
                },
                3,
            )
            .await
            .expect("insert")
            .0;
        assert_eq!(later.state, JobState::Scheduled);
        let order: Vec<i64> = store
            .claim("w", 10, 10, 1000)
            .await
            .expect("claim")
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(order, [high, low], "{backend}");
        assert_eq!(store.next_scheduled_at().await.expect("next"), Some(1000));
        let order: Vec<i64> = store
            .claim("w", 10, 1000, 1000)
            .await
            .expect("claim")
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(order, [later.id], "{backend}");
    }
}

#[tokio::test]
async fn a_claim_fails_jobs_past_their_deadline_and_queues_due_ones() {
    for (backend, store, _db) in test_stores("sweeps").await {
        let digest = module(&*store).await;
        let mut notices = store.subscribe();
        let late_queued = store
            .insert_job(
                NewJob {
                    deadline_at: Some(50),
                    ..new_job(&digest)
                },
                1,
            )
            .await
            .expect("insert")
            .0
            .id;
        let late_scheduled = store
            .insert_job(
                NewJob {
                    run_at: Some(80),
                    deadline_at: Some(60),
                    ..new_job(&digest)
                },
                2,
            )
            .await
            .expect("insert")
            .0
            .id;
        let due = store
            .insert_job(
                NewJob {
                    run_at: Some(90),
                    ..new_job(&digest)
                },
                3,
            )
            .await
            .expect("insert")
            .0
            .id;
        // At 100 both deadlines have passed: neither job starts; the due one does.
        let claimed: Vec<i64> = store
            .claim("w", 10, 100, 1000)
            .await
            .expect("claim")
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(claimed, [due], "{backend}");
        for id in [late_queued, late_scheduled] {
            let job = store.get_job(id).await.expect("get").expect("exists");
            assert_eq!(job.state, JobState::Failed, "{backend}: job {id}");
            assert_eq!(job.attempts, 0, "{backend}: job {id} never started");
            assert!(
                job.error.as_deref().unwrap_or("").contains("deadline"),
                "{backend}: {:?}",
                job.error
            );
        }
        let states = |events: Vec<Event>| -> Vec<String> {
            events
                .iter()
                .filter(|e| e.kind == "state")
                .map(|e| e.data["state"].as_str().unwrap_or("").to_string())
                .collect()
        };
        assert_eq!(
            states(store.events(late_scheduled, 0, 100).await.expect("events")),
            ["scheduled", "failed"],
            "{backend}"
        );
        assert_eq!(
            states(store.events(due, 0, 100).await.expect("events")),
            ["scheduled", "queued", "running"],
            "{backend}"
        );
        // Followers of job ends hear about both failures.
        let mut ended = Vec::new();
        let wait = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while ended.len() < 2 {
                if let Ok(Notice::Ended(id)) = notices.recv().await {
                    ended.push(id);
                }
            }
        });
        wait.await.expect("two Ended notices");
        ended.sort_unstable();
        assert_eq!(ended, [late_queued, late_scheduled], "{backend}");
    }
}

/// `insert_jobs_named` stores the jobs only while every name given still points at its digest;
/// otherwise it stores nothing and says so.
#[tokio::test]
async fn an_insert_checked_against_moved_names_stores_nothing() {
    for (backend, store, _db) in test_stores("named").await {
        let digest = module(&*store).await;
        let holds = [("demo".to_string(), digest.clone())];
        let inserted = store
            .insert_jobs_named(vec![new_job(&digest); 2], &holds, 10)
            .await
            .expect("insert");
        assert_eq!(inserted.map(|v| v.len()), Some(2), "{backend}");
        let moved = store
            .put_module(
                NewModule {
                    digest: "sha256:def".into(),
                    world: "wasmjobs:job/job".into(),
                    imports: vec![],
                    bytes: b"\0asm2".to_vec(),
                    name: Some("demo".into()),
                    owner: None,
                    may_move: true,
                },
                11,
            )
            .await
            .expect("move the name");
        assert_eq!(moved.0.digest, "sha256:def");
        let mut keyed = new_job(&digest);
        keyed.idempotency_key = Some("k".into());
        for jobs in [vec![new_job(&digest); 2], vec![keyed]] {
            let refused = store
                .insert_jobs_named(jobs, &holds, 12)
                .await
                .expect("insert");
            assert!(
                refused.is_none(),
                "{backend}: stored under a name that moved"
            );
        }
        let all = store
            .list_jobs(&JobFilter {
                limit: 100,
                ..JobFilter::default()
            })
            .await
            .expect("list");
        assert_eq!(
            all.len(),
            2,
            "{backend}: only the first two jobs are stored"
        );
    }
}

#[tokio::test]
async fn idempotency_key_returns_the_first_job() {
    for (backend, store, _db) in test_stores("idem").await {
        let digest = module(&*store).await;
        let j = NewJob {
            idempotency_key: Some("k1".into()),
            ..new_job(&digest)
        };
        let (a, created_a) = store.insert_job(j.clone(), 1).await.expect("insert");
        let (b, created_b) = store.insert_job(j, 2).await.expect("insert");
        assert!(created_a && !created_b, "{backend}");
        assert_eq!(a.id, b.id);
    }
}

#[tokio::test]
async fn a_job_naming_an_unstored_module_is_refused_and_stores_nothing() {
    for (backend, store, _db) in test_stores("unknown_module").await {
        let digest = module(&*store).await;
        let missing = "sha256:not-stored";
        // A batch with one bad job fails whole, keyless or keyed (on Postgres these are the
        // two insert statements; migration 0007 checks the module in each).
        let keyed = NewJob {
            idempotency_key: Some("k".into()),
            ..new_job(missing)
        };
        for batch in [
            vec![new_job(&digest), new_job(missing), new_job(&digest)],
            vec![new_job(&digest), keyed],
        ] {
            let err = store
                .insert_jobs(batch, 1)
                .await
                .expect_err("a job naming a module that is not stored");
            assert!(
                matches!(err, StoreError::Conflict(_)) && err.to_string().contains("not stored"),
                "{backend}: {err}"
            );
        }
        let stored = store
            .list_jobs(&JobFilter {
                limit: 100,
                ..JobFilter::default()
            })
            .await
            .expect("list");
        assert!(stored.is_empty(), "{backend}: {stored:?}");
        assert!(
            store
                .claim("w", 10, 2, 1000)
                .await
                .expect("claim")
                .is_empty(),
            "{backend}: nothing queued"
        );
        // The same jobs with a stored module go in.
        let ok = store
            .insert_jobs(vec![new_job(&digest), new_job(&digest)], 1)
            .await
            .expect("insert");
        assert_eq!(ok.len(), 2, "{backend}");
    }
}

#[tokio::test]
async fn cancel_queued_at_once_and_running_by_request() {
    for (backend, store, _db) in test_stores("cancel").await {
        let digest = module(&*store).await;
        let queued = new_job_id(&*store, &digest, 1).await;
        assert_eq!(
            store.cancel(queued, 2).await.expect("cancel"),
            JobState::Cancelled,
            "{backend}"
        );
        let running = new_job_id(&*store, &digest, 3).await;
        let c = store.claim("w", 1, 4, 1000).await.expect("claim");
        assert_eq!(
            store.cancel(running, 5).await.expect("cancel"),
            JobState::Running
        );
        assert_eq!(
            store.heartbeat("w", &[running], 6, 1000).await.expect("hb"),
            [(running, true)],
            "{backend}"
        );
        // Only the jobs named are renewed and reported.
        assert_eq!(
            store.heartbeat("w", &[], 6, 1000).await.expect("hb"),
            [],
            "{backend}"
        );
        let r = store
            .complete(&[done(&c[0], "w", Outcome::Cancelled)], 7)
            .await
            .expect("complete");
        assert_eq!(r, [Completed::Applied(JobState::Cancelled)]);
        assert!(matches!(
            store.cancel(running, 8).await,
            Ok(JobState::Cancelled)
        ));
        assert_eq!(
            store.retry(running, 9).await.expect("retry"),
            JobState::Queued,
            "{backend}"
        );
        assert!(matches!(
            store.cancel(9999, 1).await,
            Err(StoreError::NotFound { .. })
        ));
    }
}

#[tokio::test]
async fn expired_leases_are_lost_attempts_and_requeued() {
    for (backend, store, _db) in test_stores("lease").await {
        let digest = module(&*store).await;
        let id = new_job_id(&*store, &digest, 1).await;
        let c = store.claim("dead-node", 1, 2, 100).await.expect("claim");
        assert!(
            store
                .rescue(Rescue::Expired { keep: &[] }, 50)
                .await
                .expect("rescue")
                .is_empty(),
            "{backend}: lease still valid"
        );
        assert_eq!(
            store
                .rescue(Rescue::Expired { keep: &[] }, 200)
                .await
                .expect("rescue"),
            [id],
            "{backend}"
        );
        let late = store
            .complete(&[done(&c[0], "dead-node", Outcome::Succeeded)], 201)
            .await
            .expect("complete");
        assert_eq!(late, [Completed::Refused], "{backend}: no job ends twice");
        let attempts = store.attempts(id).await.expect("attempts");
        assert_eq!(attempts[0].outcome, Some(Outcome::Lost), "{backend}");
        let job = store.get_job(id).await.expect("get").expect("job");
        assert_eq!(job.state, JobState::Scheduled);
        // A lost attempt counts against max_lost, not max_attempts (2 here): a second loss
        // leaves the job's retries whole.
        store.claim("dead-node", 1, 300, 100).await.expect("claim");
        store
            .rescue(Rescue::Expired { keep: &[] }, 500)
            .await
            .expect("rescue");
        let job = store.get_job(id).await.expect("get").expect("job");
        assert_eq!(
            (job.state, job.attempts, job.lost_attempts),
            (JobState::Scheduled, 2, 2),
            "{backend}"
        );
        // Its own failures still count: two of them fail it, whatever its losses.
        for (at, next) in [(600, JobState::Scheduled), (700, JobState::Failed)] {
            let c = store.claim("w", 1, at, 100).await.expect("claim");
            let r = store
                .complete(&[done(&c[0], "w", Outcome::Failed)], at + 1)
                .await
                .expect("complete");
            assert_eq!(r, [Completed::Applied(next)], "{backend}");
        }
        let job = store.get_job(id).await.expect("get").expect("job");
        assert_eq!((job.attempts, job.lost_attempts), (4, 2), "{backend}");
    }
}

/// A job whose nodes keep dying fails once its lost attempts reach `max_lost`.
#[tokio::test]
async fn a_job_whose_nodes_keep_dying_fails_after_max_lost() {
    for (backend, store, _db) in test_stores("max_lost").await {
        let digest = module(&*store).await;
        let mut job = new_job(&digest);
        job.retry.max_lost = 3;
        let id = store.insert_job(job, 1).await.expect("insert").0.id;
        for round in 0..3i64 {
            let at = 10 + round * 1000;
            store.claim("crashy", 1, at, 100).await.expect("claim");
            store
                .rescue(Rescue::Expired { keep: &[] }, at + 200)
                .await
                .expect("rescue");
        }
        let job = store.get_job(id).await.expect("get").expect("job");
        assert_eq!(
            (job.state, job.lost_attempts, job.attempts),
            (JobState::Failed, 3, 3),
            "{backend}"
        );
    }
}

/// The jobs of a node known to be gone are taken back at once, whatever their leases; a
/// node's own held jobs are spared by its rescuer; a shutting-down node gives jobs back
/// uncharged.
#[tokio::test]
async fn gone_nodes_jobs_are_rescued_at_once_and_released_jobs_are_not_charged() {
    for (backend, store, _db) in test_stores("gone").await {
        let digest = module(&*store).await;
        let a = new_job_id(&*store, &digest, 1).await;
        let b = new_job_id(&*store, &digest, 1).await;
        let old = store
            .claim("host-1-abcd", 1, 2, 1_000_000)
            .await
            .expect("claim");
        let other = store
            .claim("host-2-beef", 1, 2, 1_000_000)
            .await
            .expect("claim");
        let mut workers = store.running_workers().await.expect("workers");
        workers.sort();
        assert_eq!(workers, ["host-1-abcd", "host-2-beef"], "{backend}");

        // Leases far from over: only the named worker's job is rescued.
        let rescued = store
            .rescue(Rescue::Workers(&["host-1-abcd".to_string()]), 10)
            .await
            .expect("rescue");
        assert_eq!(rescued, [old[0].id], "{backend}");
        let job = store.get_job(old[0].id).await.expect("get").expect("job");
        assert_eq!(
            (job.state, job.lost_attempts),
            (JobState::Scheduled, 1),
            "{backend}"
        );

        // An expired lease of a job its node still holds (a completion waiting for the store)
        // is kept for that node.
        let kept = store
            .rescue(
                Rescue::Expired {
                    keep: &[other[0].id],
                },
                2_000_000,
            )
            .await
            .expect("rescue");
        assert!(kept.is_empty(), "{backend}: {kept:?}");

        // The holder shuts down: the job goes back to the queue, its attempt not charged, and
        // a late completion of that attempt is refused.
        let released = store
            .release("host-2-beef", &[(other[0].id, other[0].attempt)], 2_000_001)
            .await
            .expect("release");
        assert_eq!(released, [other[0].id], "{backend}");
        let job = store.get_job(other[0].id).await.expect("get").expect("job");
        assert_eq!(
            (job.state, job.attempts),
            (JobState::Queued, 0),
            "{backend}"
        );
        let events = store.events(other[0].id, 0, 100).await.expect("events");
        assert_eq!(
            events.last().map(|e| e.data["released_by"].clone()),
            Some(json!("host-2-beef")),
            "{backend}: {events:?}"
        );
        let late = store
            .complete(
                &[done(&other[0], "host-2-beef", Outcome::Succeeded)],
                2_000_002,
            )
            .await
            .expect("complete");
        assert_eq!(late, [Completed::Refused], "{backend}");
        // Claimed again, it runs as attempt 1.
        let again = store.claim("w", 5, 2_000_003, 100).await.expect("claim");
        let ids: Vec<(JobId, u32)> = again.iter().map(|c| (c.id, c.attempt)).collect();
        assert!(
            ids.contains(&(b, 1)) || ids.contains(&(other[0].id, 1)),
            "{backend}: {ids:?}"
        );
        assert!(
            ids.iter()
                .all(|(id, attempt)| *id != other[0].id || *attempt == 1),
            "{backend}: {ids:?}"
        );
        let _ = a;
        store
            .probe_write("host-2-beef", 5)
            .await
            .expect("the store takes writes");
    }
}

/// A job whose attempt failed and that runs again under a newer claim keeps its own lease: when
/// the older claim's other job is found dead, the rerun is not taken for lost with it, and ends
/// as its own attempt. (A design that keeps leases per claim, decision 010, has to keep this.)
#[tokio::test]
async fn a_rerun_under_a_newer_claim_is_not_lost_with_the_older_claims_jobs() {
    for (backend, store, _db) in test_stores("rerun").await {
        let digest = module(&*store).await;
        let a = new_job_id(&*store, &digest, 1).await;
        let b = new_job_id(&*store, &digest, 1).await;
        // One claim takes both, leased until 2 + 100.
        let first = store.claim("w", 2, 2, 100).await.expect("claim");
        assert_eq!(first.len(), 2, "{backend}");
        let a1 = first.iter().find(|c| c.id == a).expect("a claimed");
        // a fails and is retried at once; the same worker claims it again, with a long lease.
        let ended = store
            .complete(&[done(a1, "w", Outcome::Failed)], 3)
            .await
            .expect("complete");
        assert!(
            matches!(
                ended[..],
                [Completed::Applied(JobState::Queued | JobState::Scheduled)]
            ),
            "{backend}: {ended:?}"
        );
        let second = store.claim("w", 2, 4, 10_000).await.expect("claim");
        assert_eq!(
            second.iter().map(|c| (c.id, c.attempt)).collect::<Vec<_>>(),
            [(a, 2)],
            "{backend}"
        );
        // b's lease runs out (its node stopped renewing it); a's second one has not.
        assert_eq!(
            store
                .rescue(Rescue::Expired { keep: &[] }, 500)
                .await
                .expect("rescue"),
            [b],
            "{backend}"
        );
        let job_a = store.get_job(a).await.expect("get").expect("a");
        assert_eq!(
            (job_a.state, job_a.attempts),
            (JobState::Running, 2),
            "{backend}"
        );
        let ended = store
            .complete(&[done(&second[0], "w", Outcome::Succeeded)], 600)
            .await
            .expect("complete");
        assert_eq!(
            ended,
            [Completed::Applied(JobState::Succeeded)],
            "{backend}"
        );
        let outcomes = |view: Vec<AttemptView>| {
            view.into_iter()
                .map(|(n, _, o, _, _)| (n, o))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            outcomes(attempt_view(&*store, a).await),
            [(1, Some(Outcome::Failed)), (2, Some(Outcome::Succeeded))],
            "{backend}"
        );
        assert_eq!(
            outcomes(attempt_view(&*store, b).await),
            [(1, Some(Outcome::Lost))],
            "{backend}"
        );
    }
}

#[tokio::test]
async fn list_with_filters_and_cursor_then_prune() {
    for (backend, store, _db) in test_stores("list").await {
        let digest = module(&*store).await;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                store
                    .insert_job(new_job(&digest), i)
                    .await
                    .expect("insert")
                    .0
                    .id,
            );
        }
        store.cancel(ids[0], 10).await.expect("cancel");
        let page = store
            .list_jobs(&JobFilter {
                limit: 2,
                ..JobFilter::default()
            })
            .await
            .expect("list");
        assert_eq!(
            page.iter().map(|j| j.id).collect::<Vec<_>>(),
            [ids[4], ids[3]],
            "{backend}"
        );
        let next = store
            .list_jobs(&JobFilter {
                limit: 2,
                cursor: Some(ids[3]),
                ..JobFilter::default()
            })
            .await
            .expect("list");
        assert_eq!(
            next.iter().map(|j| j.id).collect::<Vec<_>>(),
            [ids[2], ids[1]],
            "{backend}"
        );
        let cancelled = store
            .list_jobs(&JobFilter {
                limit: 10,
                state: Some(JobState::Cancelled),
                ..JobFilter::default()
            })
            .await
            .expect("list");
        assert_eq!(cancelled.len(), 1);
        assert_eq!(store.prune(11).await.expect("prune"), 1, "{backend}");
        assert!(store.get_job(ids[0]).await.expect("get").is_none());
        assert!(
            store
                .events(ids[0], 0, 10)
                .await
                .expect("events")
                .is_empty()
        );
    }
}

/// Listing by each state and pruning past more than one page of jobs (Postgres lists waiting and
/// running jobs through the queue tables, and prunes by walking `jobs` a page at a time).
#[tokio::test]
async fn list_by_every_state_and_prune_thousands() {
    for (backend, store, _db) in test_stores("list_states").await {
        let digest = module(&*store).await;
        let jobs = (0..2300).map(|_| new_job(&digest)).collect();
        store.insert_jobs(jobs, 1).await.expect("insert");
        let mut claimed = Vec::new();
        loop {
            let batch = store.claim("w1", 256, 2, 60_000).await.expect("claim");
            if batch.is_empty() {
                break;
            }
            claimed.extend(batch);
        }
        assert_eq!(claimed.len(), 2300, "{backend}");
        // All but the last 50 succeed; those stay running.
        for chunk in claimed[..2250].chunks(500) {
            let done: Vec<Completion> = chunk
                .iter()
                .map(|c| done(c, "w1", Outcome::Succeeded))
                .collect();
            store.complete(&done, 3).await.expect("complete");
        }
        let queued: Vec<JobId> = store
            .insert_jobs((0..3).map(|_| new_job(&digest)).collect(), 4)
            .await
            .expect("insert")
            .into_iter()
            .map(|(j, _)| j.id)
            .collect();
        let later = store
            .insert_job(
                NewJob {
                    run_at: Some(1_000_000),
                    ..new_job(&digest)
                },
                4,
            )
            .await
            .expect("insert")
            .0;
        assert_eq!(later.state, JobState::Scheduled, "{backend}");
        let list = |state, limit| {
            let store = store.clone();
            async move {
                store
                    .list_jobs(&JobFilter {
                        state: Some(state),
                        limit,
                        ..JobFilter::default()
                    })
                    .await
                    .expect("list")
                    .into_iter()
                    .map(|j| (j.id, j.state))
                    .collect::<Vec<_>>()
            }
        };
        let running = list(JobState::Running, 100).await;
        let newest_running: Vec<JobId> = claimed[2250..].iter().rev().map(|c| c.id).collect();
        assert_eq!(
            running.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            newest_running,
            "{backend}: running jobs, newest first"
        );
        assert_eq!(
            list(JobState::Queued, 100).await,
            queued
                .iter()
                .rev()
                .map(|id| (*id, JobState::Queued))
                .collect::<Vec<_>>(),
            "{backend}"
        );
        assert_eq!(
            list(JobState::Scheduled, 100).await,
            [(later.id, JobState::Scheduled)],
            "{backend}"
        );
        let succeeded = list(JobState::Succeeded, 3).await;
        let mut newest_succeeded: Vec<JobId> = claimed[..2250].iter().map(|c| c.id).collect();
        newest_succeeded.sort_unstable();
        assert_eq!(
            succeeded.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            newest_succeeded
                .iter()
                .rev()
                .take(3)
                .copied()
                .collect::<Vec<_>>(),
            "{backend}"
        );
        assert!(list(JobState::Failed, 10).await.is_empty(), "{backend}");

        // Retention takes the 2,250 finished jobs and their histories, and nothing else.
        assert_eq!(store.prune(5).await.expect("prune"), 2250, "{backend}");
        assert!(
            store.get_job(claimed[0].id).await.expect("get").is_none(),
            "{backend}"
        );
        assert!(
            store
                .get_job(claimed[2299].id)
                .await
                .expect("get")
                .is_some(),
            "{backend}"
        );
        assert!(
            store
                .events(claimed[0].id, 0, 10)
                .await
                .expect("events")
                .is_empty(),
            "{backend}"
        );
        let mut counts = store.count_by_state().await.expect("count");
        counts.sort_by_key(|(s, _)| s.as_str());
        assert_eq!(
            counts,
            [
                (JobState::Queued, 3),
                (JobState::Running, 50),
                (JobState::Scheduled, 1)
            ],
            "{backend}"
        );
        // The running jobs still end normally.
        let ends: Vec<Completion> = claimed[2250..]
            .iter()
            .map(|c| done(c, "w1", Outcome::Succeeded))
            .collect();
        let results = store.complete(&ends, 6).await.expect("complete");
        assert!(
            results
                .iter()
                .all(|r| *r == Completed::Applied(JobState::Succeeded)),
            "{backend}: {results:?}"
        );
    }
}

#[tokio::test]
async fn schedules_fire_once_per_tick() {
    for (backend, store, _db) in test_stores("sched").await {
        let s = store
            .add_schedule(
                Some("nightly".into()),
                "0 0 * * *",
                json!({"module": "demo"}),
                100,
                1,
            )
            .await
            .expect("add");
        assert!(matches!(
            store
                .add_schedule(Some("nightly".into()), "* * * * *", json!({}), 1, 1)
                .await,
            Err(StoreError::Conflict(_))
        ));
        fn next(_: &str, now: i64) -> Option<i64> {
            Some(now + 1000)
        }
        assert!(
            store
                .take_due_schedules(50, next)
                .await
                .expect("take")
                .is_empty(),
            "{backend}"
        );
        assert_eq!(
            store
                .take_due_schedules(100, next)
                .await
                .expect("take")
                .len(),
            1
        );
        assert!(
            store
                .take_due_schedules(101, next)
                .await
                .expect("take")
                .is_empty(),
            "{backend}: fired twice"
        );
        assert_eq!(
            store.list_schedules().await.expect("list")[0].next_run_at,
            1100
        );
        assert!(store.delete_schedule("nightly").await.expect("delete"));
        assert!(
            !store
                .delete_schedule(&s.id.to_string())
                .await
                .expect("delete")
        );
    }
}

/// Submitters, claimers and readers at once, on several threads: every job is claimed exactly
/// once and ends once, and every history is complete and gapless. (The SQLite store runs each
/// transaction on the calling thread under one writer lock and opens readers as reads overlap;
/// Postgres claims with `SKIP LOCKED`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submitters_claimers_and_readers_lose_nothing() {
    const JOBS: usize = 400;
    for (backend, store, _db) in test_stores("concurrent").await {
        let digest = module(&*store).await;
        let submitters: Vec<_> = (0..4)
            .map(|_| {
                let (store, digest) = (store.clone(), digest.clone());
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    for _ in 0..JOBS / 4 / 10 {
                        let group = (0..10).map(|_| new_job(&digest)).collect();
                        let inserted = store.insert_jobs(group, now_ms()).await.expect("insert");
                        ids.extend(inserted.into_iter().map(|(j, _)| j.id));
                        tokio::task::yield_now().await;
                    }
                    ids
                })
            })
            .collect();
        let all_submitted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let claimers: Vec<_> = (0..6)
            .map(|k| {
                let (store, all_submitted) = (store.clone(), all_submitted.clone());
                tokio::spawn(async move {
                    let worker = format!("w{k}");
                    let mut mine = Vec::new();
                    loop {
                        // Read before claiming: an empty claim after every job was stored
                        // means none is left.
                        let last = all_submitted.load(std::sync::atomic::Ordering::SeqCst);
                        let claimed = store
                            .claim(&worker, 7, now_ms(), 60_000)
                            .await
                            .expect("claim");
                        if claimed.is_empty() {
                            if last {
                                break;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                            continue;
                        }
                        let done: Vec<_> = claimed
                            .iter()
                            .map(|c| done(c, &worker, Outcome::Succeeded))
                            .collect();
                        let results = store.complete(&done, now_ms()).await.expect("complete");
                        assert!(
                            results
                                .iter()
                                .all(|r| matches!(r, Completed::Applied(JobState::Succeeded))),
                            "{results:?}"
                        );
                        mine.extend(claimed.iter().map(|c| c.id));
                    }
                    mine
                })
            })
            .collect();
        let readers: Vec<_> = (0..12)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    for _ in 0..100 {
                        let jobs = store
                            .list_jobs(&JobFilter {
                                limit: 20,
                                ..JobFilter::default()
                            })
                            .await
                            .expect("list");
                        for j in jobs.iter().take(3) {
                            store.events(j.id, 0, 100).await.expect("events");
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let mut submitted = Vec::new();
        for s in submitters {
            submitted.extend(s.await.expect("submitter"));
        }
        all_submitted.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut claimed = Vec::new();
        for c in claimers {
            claimed.extend(c.await.expect("claimer"));
        }
        for r in readers {
            r.await.expect("reader");
        }
        submitted.sort_unstable();
        claimed.sort_unstable();
        assert_eq!(submitted.len(), JOBS, "{backend}");
        assert_eq!(
            claimed, submitted,
            "{backend}: every job claimed exactly once"
        );
        for id in submitted {
            let job = store.get_job(id).await.expect("get").expect("job");
            assert_eq!(job.state, JobState::Succeeded, "{backend}: job {id}");
            let events = store.events(id, 0, 100).await.expect("events");
            let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
            // queued, running, the attempt's log line, succeeded.
            assert_eq!(seqs, [1, 2, 3, 4], "{backend}: job {id}'s history");
            assert_eq!(store.attempts(id).await.expect("attempts").len(), 1);
        }
    }
}

#[tokio::test]
async fn bad_sqlite_locations_are_refused_with_the_reason() {
    for url in [":memory:", "sqlite::memory:", "file:x?mode=memory"] {
        let err = wasmjobs::store::open(url).await.err().expect("refused");
        assert!(
            err.to_string().contains("in-memory SQLite database"),
            "{url}: {err}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no/such/dir/x.db");
    let err = wasmjobs::store::open(&missing.display().to_string())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("unable to open"), "{err}");
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, b"not a database, not even close").expect("write");
    let err = wasmjobs::store::open(&garbage.display().to_string())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("not a database"), "{err}");
    // A database whose schema a development build before the baseline migrated is refused,
    // saying so, and left as it was.
    let old = dir.path().join("old.db");
    drop(
        wasmjobs::store::open(&old.display().to_string())
            .await
            .expect("open"),
    );
    let conn = rusqlite::Connection::open(&old).expect("open the file");
    conn.execute(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (13, 'lost budget and nodes', TRUE, x'00', 1)",
        [],
    )
    .expect("an older build's migration");
    drop(conn);
    let err = wasmjobs::store::open(&old.display().to_string())
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("made by a development build of wasmjobs older than its baseline schema"),
        "{err}"
    );
}

/// Another process on the same SQLite file (`serve` and `worker`s on one host) holding the
/// write lock: a write waits for it without holding up the runtime's thread, then succeeds.
#[tokio::test(flavor = "current_thread")]
async fn sqlite_writes_wait_for_another_process_without_blocking_the_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shared.db").display().to_string();
    let store = wasmjobs::store::open(&path).await.expect("store");
    let digest = module(&*store).await;

    // "The other process": a connection of its own that takes the write lock for 300 ms.
    let (locked_tx, locked) = tokio::sync::oneshot::channel();
    let other = std::thread::spawn({
        let path = path.clone();
        move || {
            let conn = rusqlite::Connection::open(&path).expect("open");
            conn.execute_batch("BEGIN IMMEDIATE").expect("lock");
            let _ = locked_tx.send(());
            std::thread::sleep(std::time::Duration::from_millis(300));
            conn.execute_batch("COMMIT").expect("unlock");
        }
    });
    locked.await.expect("locked");

    // On this one thread: a ticker, and a write that has to wait for the lock.
    let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                ticks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let started = std::time::Instant::now();
    let (job, created) = store
        .insert_job(new_job(&digest), now_ms())
        .await
        .expect("the write waits for the lock, then succeeds");
    let waited = started.elapsed();
    ticker.abort();
    other.join().expect("other process");
    assert!(created);
    assert!(
        waited >= std::time::Duration::from_millis(200),
        "the write did not wait for the lock: {waited:?}"
    );
    // Blocked in SQLite's busy handler, the thread would run no timer at all while waiting.
    let ticked = ticks.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        ticked >= 5,
        "the runtime stood still while the write waited: {ticked} ticks in {waited:?}"
    );
    let stored = store.get_job(job.id).await.expect("get").expect("stored");
    assert_eq!(stored.state, JobState::Queued);
}
