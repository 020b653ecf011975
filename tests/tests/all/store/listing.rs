//! Listing, pruning and schedules.

use super::*;

pub(super) async fn list_with_filters_and_cursor_then_prune(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
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

/// Listing by each state and pruning past more than one page of jobs (Postgres lists waiting and
/// running jobs through the queue tables, and prunes by walking `jobs` a page at a time).
pub(super) async fn list_by_every_state_and_prune_thousands(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
    let digest = module(&*store).await;
    let jobs = (0..2300).map(|_| new_job(&digest)).collect();
    store.insert_jobs(jobs, 1).await.expect("insert");
    let mut claimed = Vec::new();
    loop {
        let batch = store
            .claim("w1", 256, &Holding::default(), 2, 60_000)
            .await
            .expect("claim");
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
    // The metrics' count of what waits and runs reads the live part only, and agrees.
    assert_eq!(
        store.count_unfinished().await.expect("count unfinished"),
        [
            (JobState::Scheduled, 1),
            (JobState::Queued, 3),
            (JobState::Running, 50)
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

pub(super) async fn schedules_fire_once_per_tick(backend: &'static str, store: Arc<dyn Backend>) {
    let s = store
        .add_schedule(
            NewSchedule {
                name: Some("nightly".into()),
                cron: "0 0 * * *".into(),
                tz: Some("Europe/Berlin".into()),
                overlap: Overlap::QueueOne,
                target: json!({"module": "demo"}),
                next_run_at: 100,
            },
            1,
        )
        .await
        .expect("add");
    assert!(matches!(
        store
            .add_schedule(
                NewSchedule {
                    name: Some("nightly".into()),
                    cron: "* * * * *".into(),
                    tz: None,
                    overlap: Overlap::Allow,
                    target: json!({}),
                    next_run_at: 1,
                },
                1
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    fn next(s: &Schedule, now: i64) -> Option<i64> {
        // The schedule comes with its time zone.
        assert_eq!(s.tz.as_deref(), Some("Europe/Berlin"));
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
    // Its overlap policy, a kept tick and its last job read back.
    store.schedule_pending(s.id, 1100).await.expect("pend");
    let listed = store.list_schedules().await.expect("list").remove(0);
    assert_eq!(
        (listed.overlap, listed.pending_tick, listed.last_job),
        (Overlap::QueueOne, Some(1100), None),
        "{backend}"
    );
    store
        .schedule_fired(s.id, Fired::Job(42))
        .await
        .expect("fired");
    let listed = store.list_schedules().await.expect("list").remove(0);
    assert_eq!(
        (listed.pending_tick, listed.last_job, listed.last_run),
        (None, Some(42), None),
        "{backend}"
    );
    // A schedule of a workflow records the run it started.
    store.schedule_pending(s.id, 1200).await.expect("pend");
    store
        .schedule_fired(s.id, Fired::Run(7))
        .await
        .expect("fired");
    let listed = store.list_schedules().await.expect("list").remove(0);
    assert_eq!(
        (listed.pending_tick, listed.last_job, listed.last_run),
        (None, None, Some(7)),
        "{backend}"
    );
    assert!(store.delete_schedule("nightly").await.expect("delete"));
    assert!(
        !store
            .delete_schedule(&s.id.to_string())
            .await
            .expect("delete")
    );
}

/// The nodes' activity reports add up by minute across nodes and reports, a node's slots are
/// its last report's, nodes not seen lately are left out, and minutes older than a day go.
pub(super) async fn activity_reports_add_up_across_nodes(
    backend: &'static str,
    store: Arc<dyn Backend>,
) {
    use wasmjobs::store::{ActivityReport, MinuteEnds};
    let minute = |m: i64, s: u64, f: u64, c: u64| MinuteEnds {
        minute: m,
        succeeded: s,
        failed: f,
        cancelled: c,
    };
    let day = wasmjobs::store::ACTIVITY_KEPT_MS;
    let now = 10 * day;
    let report = |node: &str, slots: u64, busy: u64, minutes: Vec<MinuteEnds>| ActivityReport {
        node: node.into(),
        slots,
        busy,
        minutes,
    };
    store
        .report_activity(
            &report(
                "a",
                4,
                1,
                vec![
                    minute(now - 120_000, 3, 1, 0),
                    minute(now - 60_000, 2, 0, 0),
                ],
            ),
            now - 50_000,
        )
        .await
        .expect("report a");
    store
        .report_activity(
            &report("a", 4, 3, vec![minute(now - 60_000, 1, 0, 1)]),
            now - 1_000,
        )
        .await
        .expect("report a again");
    store
        .report_activity(
            &report(
                "b",
                2,
                2,
                vec![
                    minute(now - 60_000, 5, 5, 0),
                    minute(now - 2 * day, 9, 9, 9),
                ],
            ),
            now,
        )
        .await
        .expect("report b");
    store
        .report_activity(&report("gone", 8, 0, vec![]), now - 60_000)
        .await
        .expect("report gone");
    let a = store
        .activity(now - 3_600_000, now - 10_000)
        .await
        .expect("activity");
    assert_eq!(
        a.minutes,
        vec![
            minute(now - 120_000, 3, 1, 0),
            minute(now - 60_000, 8, 5, 1)
        ],
        "{backend}"
    );
    let nodes: Vec<(String, u64, u64)> = a
        .nodes
        .iter()
        .map(|n| (n.node.clone(), n.slots, n.busy))
        .collect();
    assert_eq!(
        nodes,
        vec![("a".to_string(), 4, 3), ("b".to_string(), 2, 2)],
        "{backend}"
    );
    let all = store.activity(0, 0).await.expect("activity");
    assert!(
        all.minutes.iter().all(|m| m.minute > now - day),
        "{backend}: minutes older than a day are dropped: {:?}",
        all.minutes
    );
}
