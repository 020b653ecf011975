//! Concurrency, and what only one backend has (SQLite files, Postgres claims).

use super::*;

/// Submitters, claimers and readers at once, on several threads: every job is claimed exactly
/// once and ends once, and every history is complete and gapless. (The SQLite store runs each
/// transaction on the calling thread under one writer lock and opens readers as reads overlap;
/// Postgres claims with `SKIP LOCKED`.)
pub(super) async fn concurrent_submitters_claimers_and_readers_lose_nothing(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
    const JOBS: usize = 400;
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
                        .claim(&worker, 7, &Holding::default(), now_ms(), 60_000)
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

/// Two stores on one Postgres schema stand for two processes. With their relays running, a
/// change committed through one reaches the other's subscribers; what was committed just
/// before a relay's shutdown still goes out, and nothing after it; a store gives its relay
/// once.
#[tokio::test]
async fn postgres_notices_reach_other_processes_through_their_relays() {
    use std::time::Duration;
    use wasmjobs::notices::Relay;
    let Some((url, schema, _admin)) = postgres_only(
        "postgres_notices_reach_other_processes_through_their_relays",
        "relay",
    )
    .await
    else {
        return;
    };
    let a = wasmjobs::store::open_postgres_schema(&url, &schema)
        .await
        .expect("store a");
    let b = wasmjobs::store::open_postgres_schema(&url, &schema)
        .await
        .expect("store b");
    let relay_a = Relay::start(&*a).await.expect("relay a");
    assert!(a.relay().is_none(), "a store gives its relay once");
    let relay_b = Relay::start(&*b).await.expect("relay b");
    let heard = b.subscribe();
    let heard_in = |heard: &tokio::sync::broadcast::Receiver<Notice>, want: Notice, wait| {
        let mut heard = heard.resubscribe();
        async move {
            tokio::time::timeout(wait, async {
                while heard.recv().await.ok() != Some(want) {}
            })
            .await
            .is_ok()
        }
    };
    let digest = module(&*a).await;
    let mut ids = Vec::new();
    for at in 1..=3 {
        ids.push(new_job_id(&*a, &digest, at).await);
    }
    // Each cancel through a is a change of its job: `Events(id)`.
    let waiting = heard_in(&heard, Notice::Events(ids[0]), Duration::from_secs(5));
    a.cancel(ids[0], 10).await.expect("cancel");
    assert!(waiting.await, "b heard of a's change");

    let waiting = heard_in(&heard, Notice::Events(ids[1]), Duration::from_secs(5));
    a.cancel(ids[1], 11).await.expect("cancel");
    relay_a.shutdown().await;
    assert!(
        waiting.await,
        "the notice queued before the shutdown went out"
    );

    let waiting = heard_in(&heard, Notice::Events(ids[2]), Duration::from_secs(1));
    a.cancel(ids[2], 12).await.expect("cancel");
    assert!(!waiting.await, "a stopped relay sends nothing");
    relay_b.shutdown().await;
}
