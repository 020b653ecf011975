//! Concurrency keys: places up to the limit, waiting jobs out of the claims' way, places
//! passed on by priority then age at every kind of end, and taken again by a retry by hand.

use super::*;

/// A job of `digest` with concurrency key `key` (limit `limit`) and `priority`, inserted at
/// `at`: its id, and whether it waits for a place.
async fn keyed(
    store: &dyn Store,
    digest: &str,
    key: &str,
    limit: u32,
    priority: i64,
    at: i64,
) -> (JobId, bool) {
    let job = NewJob {
        priority,
        concurrency: Some(Concurrency {
            key: key.into(),
            limit,
        }),
        ..new_job(digest)
    };
    let (job, _) = store.insert_job(job, at).await.expect("insert");
    (job.id, job.waiting_for_key)
}

async fn waits(store: &dyn Store, id: JobId) -> bool {
    let job = store.get_job(id).await.expect("get").expect("exists");
    job.waiting_for_key
}

async fn claim_ids(store: &dyn Store, at: i64) -> Vec<Claimed> {
    store
        .claim("w", 20, &Holding::default(), at, 60_000)
        .await
        .expect("claim")
}

fn ids(claimed: &[Claimed]) -> Vec<JobId> {
    let mut ids: Vec<JobId> = claimed.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    ids
}

async fn end(store: &dyn Store, c: &Claimed, outcome: Outcome, at: i64) {
    let r = store
        .complete(&[done(c, "w", outcome)], at)
        .await
        .expect("complete");
    assert!(matches!(r[0], Completed::Applied(_)), "{r:?}");
}

pub(super) async fn a_key_runs_its_jobs_up_to_its_limit_in_order_and_blocks_no_other(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
    let digest = module(&*store).await;
    let t = 10_000;
    let (a1, w1) = keyed(&*store, &digest, "k", 1, 0, t).await;
    let (a2, w2) = keyed(&*store, &digest, "k", 1, 0, t + 1).await;
    // Newer, but of higher priority: it takes the next place before a2.
    let (a3, w3) = keyed(&*store, &digest, "k", 1, 5, t + 2).await;
    let free = new_job_id(&*store, &digest, t + 3).await;
    let (other, wo) = keyed(&*store, &digest, "other", 1, -5, t + 4).await;
    assert_eq!(
        (w1, w2, w3, wo),
        (false, true, true, false),
        "{backend}: only the first job of a key of limit 1 has a place"
    );
    // The waiting jobs hold no slot and stand in front of nothing, although a3 has the
    // highest priority in the queue.
    let first = claim_ids(&*store, t + 10).await;
    assert_eq!(ids(&first), vec![a1, free, other], "{backend}");
    let counts = store.count_unfinished().await.expect("count");
    assert_eq!(
        counts[1],
        (JobState::Queued, 2),
        "{backend}: jobs waiting for their key are queued jobs"
    );
    let listed = store.queues().await.expect("queues");
    let default = listed
        .iter()
        .find(|q| q.settings.name == "default")
        .expect("default queue");
    assert_eq!((default.queued, default.running), (2, 3), "{backend}");
    let queued = store
        .list_jobs(&JobFilter {
            state: Some(JobState::Queued),
            limit: 10,
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        queued
            .iter()
            .map(|j| (j.id, j.waiting_for_key))
            .collect::<Vec<_>>(),
        vec![(a3, true), (a2, true)],
        "{backend}"
    );
    assert!(claim_ids(&*store, t + 11).await.is_empty(), "{backend}");

    // a1 ends: its place goes to a3 (priority), a2 still waits.
    let a1c = first.iter().find(|c| c.id == a1).expect("claimed a1");
    assert!(a1c.keyed, "{backend}: a claimed job says it has a key");
    end(&*store, a1c, Outcome::Succeeded, t + 20).await;
    assert!(!waits(&*store, a3).await, "{backend}");
    assert!(waits(&*store, a2).await, "{backend}");
    let second = claim_ids(&*store, t + 21).await;
    assert_eq!(ids(&second), vec![a3], "{backend}");
    // A failed attempt that will be retried keeps the place: a2 still waits.
    end(&*store, &second[0], Outcome::Trapped, t + 30).await;
    assert!(
        waits(&*store, a2).await,
        "{backend}: a retry gave up its place"
    );
    let third = claim_ids(&*store, t + 31).await;
    assert_eq!((ids(&third), third[0].attempt), (vec![a3], 2), "{backend}");
    // Its last attempt fails: the job ended, a2 has the place.
    end(&*store, &third[0], Outcome::Trapped, t + 40).await;
    let a3_job = store.get_job(a3).await.expect("get").expect("exists");
    assert_eq!(a3_job.state, JobState::Failed, "{backend}");
    assert!(!waits(&*store, a2).await, "{backend}");

    // A job that waits and is cancelled gives up its wait, not the place a2 holds.
    let (a4, w4) = keyed(&*store, &digest, "k", 1, 0, t + 41).await;
    assert!(w4, "{backend}");
    assert_eq!(
        store.cancel(a4, t + 42).await.expect("cancel"),
        JobState::Cancelled
    );
    assert!(!waits(&*store, a4).await, "{backend}");
    let fourth = claim_ids(&*store, t + 43).await;
    assert_eq!(ids(&fourth), vec![a2], "{backend}");
    end(&*store, &fourth[0], Outcome::Succeeded, t + 50).await;
    // Nothing holds the key now: a new job has a place at once.
    let (a5, w5) = keyed(&*store, &digest, "k", 1, 0, t + 51).await;
    assert!(!w5, "{backend}: the key's places were not all given back");

    // Retried by hand while a5 holds the place, a3 waits; cancelling a5 (queued, holding the
    // place) hands it on.
    assert_eq!(
        store.retry(a3, t + 52).await.expect("retry"),
        JobState::Queued
    );
    assert!(waits(&*store, a3).await, "{backend}");
    store.cancel(a5, t + 53).await.expect("cancel");
    assert!(!waits(&*store, a3).await, "{backend}");
    assert_eq!(
        ids(&claim_ids(&*store, t + 54).await),
        vec![a3],
        "{backend}"
    );

    // A limit of two: two places, then the third waits.
    let mut two = Vec::new();
    for i in 0..3 {
        two.push(keyed(&*store, &digest, "two", 2, 0, t + 60 + i).await.1);
    }
    assert_eq!(two, vec![false, false, true], "{backend}");
}

pub(super) async fn a_deadline_passed_hands_a_keys_place_on(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
    let digest = module(&*store).await;
    let t = 10_000;
    // d1 holds the key's place and must start by t + 5; d2 waits behind it.
    let d1 = store
        .insert_job(
            NewJob {
                deadline_at: Some(t + 5),
                concurrency: Some(Concurrency {
                    key: "d".into(),
                    limit: 1,
                }),
                ..new_job(&digest)
            },
            t,
        )
        .await
        .expect("insert")
        .0
        .id;
    let (d2, w2) = keyed(&*store, &digest, "d", 1, 0, t + 1).await;
    assert!(w2, "{backend}");
    // The claim after the deadline fails d1 and starts d2.
    let claimed = claim_ids(&*store, t + 10).await;
    let d1_job = store.get_job(d1).await.expect("get").expect("exists");
    assert_eq!(d1_job.state, JobState::Failed, "{backend}");
    assert_eq!(ids(&claimed), vec![d2], "{backend}");
}

/// Submitters and claimers at once, on several connections: three keys of limit 1, twenty
/// jobs each; four claimers claim, hold each job a moment and end it. No claimer ever holds a
/// job of a key another holds, and every job ends.
pub(super) async fn concurrent_claimers_never_hold_two_jobs_of_a_key(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
    let digest = module(&*store).await;
    let clock = Arc::new(AtomicI64::new(10_000));
    let submitters: Vec<_> = (0..3)
        .map(|s| {
            let (store, digest, clock) = (store.clone(), digest.clone(), clock.clone());
            tokio::spawn(async move {
                for i in 0..20 {
                    let key = format!("k{}", (s + i) % 3);
                    let at = clock.fetch_add(1, Ordering::Relaxed);
                    keyed(&*store, &digest, &key, 1, 0, at).await;
                }
            })
        })
        .collect();
    let holding: Arc<Mutex<HashMap<String, JobId>>> = Arc::default();
    let ended = Arc::new(AtomicUsize::new(0));
    let claimers: Vec<_> = (0..4)
        .map(|n| {
            let (store, clock) = (store.clone(), clock.clone());
            let (holding, ended) = (holding.clone(), ended.clone());
            tokio::spawn(async move {
                let worker = format!("w{n}");
                let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
                while ended.load(Ordering::Relaxed) < 60 && std::time::Instant::now() < until {
                    let at = clock.fetch_add(1, Ordering::Relaxed);
                    let claimed = store
                        .claim(&worker, 3, &Holding::default(), at, 60_000)
                        .await
                        .expect("claim");
                    let mut mine = Vec::new();
                    for c in &claimed {
                        let job = store.get_job(c.id).await.expect("get").expect("exists");
                        let key = job.concurrency.expect("keyed").key;
                        let held = holding.lock().expect("map").insert(key.clone(), c.id);
                        assert!(
                            held.is_none(),
                            "{backend}: jobs {held:?} and {} of key {key} held at once",
                            c.id
                        );
                        mine.push(key);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    // Given up in the map before the store hands the place on.
                    for key in &mine {
                        holding.lock().expect("map").remove(key);
                    }
                    let completions: Vec<Completion> = claimed
                        .iter()
                        .map(|c| done(c, &worker, Outcome::Succeeded))
                        .collect();
                    if !completions.is_empty() {
                        let at = clock.fetch_add(1, Ordering::Relaxed);
                        store.complete(&completions, at).await.expect("complete");
                        ended.fetch_add(completions.len(), Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for s in submitters {
        s.await.expect("submitter");
    }
    for c in claimers {
        c.await.expect("claimer");
    }
    assert_eq!(
        ended.load(Ordering::Relaxed),
        60,
        "{backend}: not every keyed job ended"
    );
    let counts = store.count_unfinished().await.expect("count");
    assert!(counts.iter().all(|(_, n)| *n == 0), "{backend}: {counts:?}");
}
