//! Named queues: fair shares by weight, pause, `max_running`, rates, and the listing.

use super::*;

/// Inserts `n` jobs of `digest` in `queue` at `at`, with `priority`; their ids in order.
async fn fill(
    store: &dyn Store,
    digest: &str,
    queue: &str,
    n: usize,
    priority: i64,
    at: i64,
) -> Vec<JobId> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let job = NewJob {
            queue: queue.into(),
            priority,
            ..new_job(digest)
        };
        ids.push(store.insert_job(job, at).await.expect("insert").0.id);
    }
    ids
}

fn settings(name: &str) -> QueueSettings {
    QueueSettings::defaults(name)
}

fn queues_of(claimed: &[Claimed]) -> Vec<&str> {
    claimed.iter().map(|c| c.queue.as_str()).collect()
}

fn count(claimed: &[Claimed], queue: &str) -> usize {
    claimed.iter().filter(|c| c.queue == queue).count()
}

pub(super) async fn claims_share_a_nodes_slots_between_queues_by_weight(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
    let digest = module(&*store).await;
    // `bulk` first and with a higher priority: without queues it would take every claim.
    let bulk = fill(&*store, &digest, "bulk", 20, 9, 10).await;
    let quick = fill(&*store, &digest, "default", 20, 0, 20).await;
    store
        .configure_queues(
            &[QueueSettings {
                weight: 3,
                ..settings("default")
            }],
            30,
        )
        .await
        .expect("configure");
    let claimed = store
        .claim("w", 8, &Holding::default(), 40, 60_000)
        .await
        .expect("claim");
    assert_eq!(
        (count(&claimed, "default"), count(&claimed, "bulk")),
        (6, 2),
        "{backend}: weights 3 and 1 over 8 slots: {:?}",
        queues_of(&claimed)
    );
    // Within a queue, claim order: the oldest of equal priority first.
    let ids: Vec<JobId> = claimed
        .iter()
        .filter(|c| c.queue == "bulk")
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, bulk[..2], "{backend}");
    // What the node holds counts: holding 6 of `default` and 0 of `bulk`, the next 2 are
    // `bulk`'s (6/3 = 2 = (0 + 2)/1).
    let claimed = store
        .claim(
            "w",
            2,
            &Holding {
                held: vec![("default".into(), 6)],
                ..Holding::default()
            },
            50,
            60_000,
        )
        .await
        .expect("claim");
    assert_eq!(queues_of(&claimed), ["bulk", "bulk"], "{backend}");
    // The node's own room: at most 1 of `bulk` (its jobs are slow) and 2 of any other queue.
    let mine = Holding {
        room: vec![("bulk".into(), 1)],
        other_room: Some(2),
        ..Holding::default()
    };
    let claimed = store
        .claim("w", 10, &mine, 55, 60_000)
        .await
        .expect("claim");
    assert_eq!(
        (count(&claimed, "default"), count(&claimed, "bulk")),
        (2, 1),
        "{backend}: {:?}",
        queues_of(&claimed)
    );
    // A queue whose work runs out gives its share away: the rest of `default` and all of
    // `bulk` come out, nothing is left behind.
    let claimed = store
        .claim("w", 100, &Holding::default(), 60, 60_000)
        .await
        .expect("claim");
    assert_eq!(
        (count(&claimed, "default"), count(&claimed, "bulk")),
        (12, 15),
        "{backend}"
    );
    assert!(claimed.iter().any(|c| c.id == quick[19]), "{backend}");
}

pub(super) async fn a_paused_queue_keeps_its_jobs_until_it_is_resumed(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
    let digest = module(&*store).await;
    let held = fill(&*store, &digest, "reports", 3, 0, 10).await;
    fill(&*store, &digest, "default", 2, 0, 10).await;
    assert_eq!(
        store
            .set_queue_paused("nowhere", true, 20)
            .await
            .expect("pause"),
        None,
        "{backend}: an unknown queue is paused"
    );
    let paused = store
        .set_queue_paused("reports", true, 20)
        .await
        .expect("pause")
        .expect("known");
    assert!(
        paused.settings.paused && paused.queued == 3,
        "{backend}: {paused:?}"
    );
    let claimed = store
        .claim("w", 10, &Holding::default(), 30, 60_000)
        .await
        .expect("claim");
    assert_eq!(queues_of(&claimed), ["default", "default"], "{backend}");
    let listed = store.queues().await.expect("queues");
    let reports = listed
        .iter()
        .find(|q| q.settings.name == "reports")
        .expect("listed");
    assert!(
        reports.settings.paused && reports.queued == 3,
        "{backend}: {reports:?}"
    );
    // A process that declares the queue without `paused` does not resume it.
    store
        .configure_queues(&[settings("reports")], 35)
        .await
        .expect("configure");
    assert!(
        store
            .claim("w", 10, &Holding::default(), 36, 60_000)
            .await
            .expect("claim")
            .is_empty(),
        "{backend}"
    );
    store
        .set_queue_paused("reports", false, 40)
        .await
        .expect("resume")
        .expect("known");
    let claimed = store
        .claim("w", 10, &Holding::default(), 50, 60_000)
        .await
        .expect("claim");
    let ids: Vec<JobId> = claimed.iter().map(|c| c.id).collect();
    assert_eq!(ids, held, "{backend}");
}

pub(super) async fn max_running_holds_across_claimers(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
    let digest = module(&*store).await;
    store
        .configure_queues(
            &[QueueSettings {
                max_running: Some(2),
                ..settings("narrow")
            }],
            5,
        )
        .await
        .expect("configure");
    fill(&*store, &digest, "narrow", 5, 0, 10).await;
    fill(&*store, &digest, "default", 3, 0, 10).await;
    let first = store
        .claim("w1", 10, &Holding::default(), 20, 60_000)
        .await
        .expect("claim");
    assert_eq!(
        (count(&first, "narrow"), count(&first, "default")),
        (2, 3),
        "{backend}: {:?}",
        queues_of(&first)
    );
    let second = store
        .claim("w2", 10, &Holding::default(), 30, 60_000)
        .await
        .expect("claim");
    assert!(
        second.is_empty(),
        "{backend}: a second node went past max_running"
    );
    // One ends: one more may start.
    let ended = first.iter().find(|c| c.queue == "narrow").expect("narrow");
    store
        .complete(&[done(ended, "w1", Outcome::Succeeded)], 40)
        .await
        .expect("complete");
    let third = store
        .claim("w2", 10, &Holding::default(), 50, 60_000)
        .await
        .expect("claim");
    assert_eq!(queues_of(&third), ["narrow"], "{backend}");
    let listed = store.queues().await.expect("queues");
    let narrow = listed
        .iter()
        .find(|q| q.settings.name == "narrow")
        .expect("listed");
    assert_eq!(
        (narrow.running, narrow.queued, narrow.settings.max_running),
        (2, 2, Some(2)),
        "{backend}"
    );
    // Listing by queue, in every state (each backend reads waiting, running and ended jobs
    // its own way).
    let listed = |queue: &str, state: Option<JobState>| {
        let store = store.clone();
        let filter = JobFilter {
            queue: Some(queue.to_string()),
            state,
            limit: 100,
            ..JobFilter::default()
        };
        async move {
            let jobs = store.list_jobs(&filter).await.expect("list");
            assert!(
                jobs.iter()
                    .all(|j| j.queue == filter.queue.clone().unwrap_or_default())
            );
            jobs.len()
        }
    };
    assert_eq!(listed("narrow", None).await, 5, "{backend}");
    assert_eq!(
        listed("narrow", Some(JobState::Running)).await,
        2,
        "{backend}"
    );
    assert_eq!(
        listed("narrow", Some(JobState::Queued)).await,
        2,
        "{backend}"
    );
    assert_eq!(
        listed("narrow", Some(JobState::Succeeded)).await,
        1,
        "{backend}"
    );
    assert_eq!(
        listed("default", Some(JobState::Running)).await,
        3,
        "{backend}"
    );
    assert_eq!(listed("nowhere", None).await, 0, "{backend}");
}

pub(super) async fn a_rate_limits_starts_with_a_bucket_kept_in_the_store(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
    let digest = module(&*store).await;
    let t = 1_000_000;
    store
        .configure_queues(
            &[QueueSettings {
                rate: Some("2/s".parse().expect("rate")),
                ..settings("slow")
            }],
            t,
        )
        .await
        .expect("configure");
    fill(&*store, &digest, "slow", 20, 0, t).await;
    let n = |c: Vec<Claimed>| c.len();
    // A full bucket: a burst of one second's worth.
    assert_eq!(
        n(store
            .claim("a", 10, &Holding::default(), t, 60_000)
            .await
            .expect("claim")),
        2,
        "{backend}"
    );
    assert_eq!(
        n(store
            .claim("b", 10, &Holding::default(), t + 100, 60_000)
            .await
            .expect("claim")),
        0,
        "{backend}"
    );
    assert_eq!(
        n(store
            .claim("b", 10, &Holding::default(), t + 600, 60_000)
            .await
            .expect("claim")),
        1,
        "{backend}"
    );
    // A claimer whose clock read earlier (it read it before waiting for the queue's row) takes
    // nothing and does not set the bucket's time back: by t + 1400 the bucket has refilled
    // from t + 600 only (0.2 + 1.6 tokens), not from t + 300.
    assert_eq!(
        n(store
            .claim("c", 10, &Holding::default(), t + 300, 60_000)
            .await
            .expect("claim")),
        0,
        "{backend}"
    );
    assert_eq!(
        n(store
            .claim("b", 10, &Holding::default(), t + 1_400, 60_000)
            .await
            .expect("claim")),
        1,
        "{backend}: a clock read before the last claim must not refill the bucket twice"
    );
    // Long idle: never more than the burst.
    assert_eq!(
        n(store
            .claim("a", 10, &Holding::default(), t + 60_000, 60_000)
            .await
            .expect("claim")),
        2,
        "{backend}"
    );
    let listed = store.queues().await.expect("queues");
    let slow = listed
        .iter()
        .find(|q| q.settings.name == "slow")
        .expect("listed");
    assert_eq!(
        slow.settings.rate.map(|r| r.to_string()).as_deref(),
        Some("2/s"),
        "{backend}"
    );
    assert_eq!((slow.running, slow.queued), (6, 14), "{backend}");
}
