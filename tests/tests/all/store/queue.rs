//! Claims, sweeps, cancels, and the times they write.

use super::*;

pub(super) async fn cancels_retries_and_deadline_sweeps_never_go_back_before_the_jobs_last_transition(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
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
    let claimed = store
        .claim("w", 10, &Holding::default(), 90, 1000)
        .await
        .expect("claim");
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
    let first = store
        .claim("w", 2, &Holding::default(), 20, 1000)
        .await
        .expect("claim");
    assert_eq!(claims().await, [("w".to_string(), ids[..2].to_vec())]);
    store
        .complete(&[done(&first[0], "w", Outcome::Succeeded)], 30)
        .await
        .expect("complete");
    let second = store
        .claim("w", 2, &Holding::default(), 40, 1000)
        .await
        .expect("claim");
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
            .claim("w", 2, &Holding::default(), 60, 1000)
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
            .claim("w", 10, &Holding::default(), 80, 1000)
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

pub(super) async fn claims_follow_priority_then_run_at_then_age(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
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
        .claim("w", 10, &Holding::default(), 10, 1000)
        .await
        .expect("claim")
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(order, [high, low], "{backend}");
    assert_eq!(store.next_scheduled_at().await.expect("next"), Some(1000));
    let order: Vec<i64> = store
        .claim("w", 10, &Holding::default(), 1000, 1000)
        .await
        .expect("claim")
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(order, [later.id], "{backend}");
}

pub(super) async fn a_claim_fails_jobs_past_their_deadline_and_queues_due_ones(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
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
        .claim("w", 10, &Holding::default(), 100, 1000)
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

pub(super) async fn cancel_queued_at_once_and_running_by_request(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
    let digest = module(&*store).await;
    let queued = new_job_id(&*store, &digest, 1).await;
    assert_eq!(
        store.cancel(queued, 2).await.expect("cancel"),
        JobState::Cancelled,
        "{backend}"
    );
    let running = new_job_id(&*store, &digest, 3).await;
    let c = store
        .claim("w", 1, &Holding::default(), 4, 1000)
        .await
        .expect("claim");
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
