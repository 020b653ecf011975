//! Modules, submission, a job's history and settings, idempotency keys.

use super::*;

pub(super) async fn modules_are_content_addressed_and_named(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
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

pub(super) async fn lifecycle_with_retry_and_complete_history(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
    let digest = module(&*store).await;
    let (job, created) = store
        .insert_job(new_job(&digest), 10)
        .await
        .expect("insert");
    assert!(created);
    assert_eq!(job.state, JobState::Queued, "{backend}");

    let claimed = store
        .claim("w1", 10, &Holding::default(), 20, 1000)
        .await
        .expect("claim");
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
            .claim("w2", 10, &Holding::default(), 21, 1000)
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
    let again = store
        .claim("w2", 10, &Holding::default(), 40, 1000)
        .await
        .expect("claim");
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

/// A node's clock reading can be a little behind the time a job was stored with: its claim
/// statement took `now` before another task (or node) stored the job. The attempt still starts
/// no earlier than the job was created, ends no earlier than it started, and the job's history
/// reads forward in time.
pub(super) async fn an_attempt_never_starts_before_its_job_was_stored_nor_ends_before_it_started(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
    let digest = module(&*store).await;
    let mut retried = new_job(&digest);
    retried.retry.max_attempts = 2;
    let (job, _) = store.insert_job(retried, 100).await.expect("insert");
    // Claimed with a reading 10 ms behind the insert's, ended with one 5 ms behind.
    let claimed = store
        .claim("w1", 10, &Holding::default(), 90, 1000)
        .await
        .expect("claim");
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
    let again = store
        .claim("w2", 10, &Holding::default(), 100, 1000)
        .await
        .expect("claim");
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

/// A worker name and an error text with quotes, backslashes, tabs, newlines and non-ASCII come
/// back exactly, in the `running` event and in the ended attempt: both are lines in the job's
/// row on Postgres, built as text (a raw tab or newline would split them).
pub(super) async fn awkward_worker_names_and_errors_come_back_exactly(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
    let digest = module(&*store).await;
    let (job, _) = store
        .insert_job(new_job(&digest), 10)
        .await
        .expect("insert");
    let worker = "node \"a\"\tb\\c\nd ü";
    let claimed = store
        .claim(worker, 10, &Holding::default(), 20, 1000)
        .await
        .expect("claim");
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

/// Jobs submitted together with the same limits, retry policy and grants, and one with others:
/// each job runs and reads back with its own, and a hand `retry` of one changes no other's
/// (both backends keep shared settings once).
pub(super) async fn jobs_read_back_their_own_settings_when_others_share_them(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
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
    let claimed = store
        .claim("w", 10, &Holding::default(), 20, 1000)
        .await
        .expect("claim");
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
    let again = store
        .claim("w", 10, &Holding::default(), 50, 1000)
        .await
        .expect("claim");
    assert_eq!(
        again
            .iter()
            .map(|c| (c.id, c.attempt, c.limits.fuel))
            .collect::<Vec<_>>(),
        [(ids[0], 2, 123_456)],
        "{backend}"
    );
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
    let claimed = store
        .claim("w", 10, &Holding::default(), 20, 1000)
        .await
        .expect("claim");
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
    let claimed = store
        .claim("w", 10, &Holding::default(), 25, 1000)
        .await
        .expect("claim");
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
        .claim("w2", 10, &Holding::default(), 2 * hour + 4, 1000)
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

pub(super) async fn idempotency_key_returns_the_first_job(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
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

pub(super) async fn a_job_naming_an_unstored_module_is_refused_and_stores_nothing(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
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
            .claim("w", 10, &Holding::default(), 2, 1000)
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

/// `insert_jobs_named` stores the jobs only while every name given still points at its digest;
/// otherwise it stores nothing and says so.
pub(super) async fn an_insert_checked_against_moved_names_stores_nothing(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
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
