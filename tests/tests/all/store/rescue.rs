//! Lost attempts: expired leases, gone nodes, released jobs.

use super::*;

pub(super) async fn expired_leases_are_lost_attempts_and_requeued(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
    let digest = module(&*store).await;
    let id = new_job_id(&*store, &digest, 1).await;
    let c = store
        .claim("dead-node", 1, &Holding::default(), 2, 100)
        .await
        .expect("claim");
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
    store
        .claim("dead-node", 1, &Holding::default(), 300, 100)
        .await
        .expect("claim");
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
        let c = store
            .claim("w", 1, &Holding::default(), at, 100)
            .await
            .expect("claim");
        let r = store
            .complete(&[done(&c[0], "w", Outcome::Failed)], at + 1)
            .await
            .expect("complete");
        assert_eq!(r, [Completed::Applied(next)], "{backend}");
    }
    let job = store.get_job(id).await.expect("get").expect("job");
    assert_eq!((job.attempts, job.lost_attempts), (4, 2), "{backend}");
}

/// A job whose nodes keep dying fails once its lost attempts reach `max_lost`.
pub(super) async fn a_job_whose_nodes_keep_dying_fails_after_max_lost(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
    let digest = module(&*store).await;
    let mut job = new_job(&digest);
    job.retry.max_lost = 3;
    let id = store.insert_job(job, 1).await.expect("insert").0.id;
    for round in 0..3i64 {
        let at = 10 + round * 1000;
        store
            .claim("crashy", 1, &Holding::default(), at, 100)
            .await
            .expect("claim");
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

/// The jobs of a node known to be gone are taken back at once, whatever their leases; a
/// node's own held jobs are spared by its rescuer; a shutting-down node gives jobs back
/// uncharged.
pub(super) async fn gone_nodes_jobs_are_rescued_at_once_and_released_jobs_are_not_charged(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
    let digest = module(&*store).await;
    let a = new_job_id(&*store, &digest, 1).await;
    let b = new_job_id(&*store, &digest, 1).await;
    let old = store
        .claim("host-1-abcd", 1, &Holding::default(), 2, 1_000_000)
        .await
        .expect("claim");
    let other = store
        .claim("host-2-beef", 1, &Holding::default(), 2, 1_000_000)
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
    let again = store
        .claim("w", 5, &Holding::default(), 2_000_003, 100)
        .await
        .expect("claim");
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

/// A job whose attempt failed and that runs again under a newer claim keeps its own lease: when
/// the older claim's other job is found dead, the rerun is not taken for lost with it, and ends
/// as its own attempt. (A design that keeps leases per claim, decision 010, has to keep this.)
pub(super) async fn a_rerun_under_a_newer_claim_is_not_lost_with_the_older_claims_jobs(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
    let digest = module(&*store).await;
    let a = new_job_id(&*store, &digest, 1).await;
    let b = new_job_id(&*store, &digest, 1).await;
    // One claim takes both, leased until 2 + 100.
    let first = store
        .claim("w", 2, &Holding::default(), 2, 100)
        .await
        .expect("claim");
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
    let second = store
        .claim("w", 2, &Holding::default(), 4, 10_000)
        .await
        .expect("claim");
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
