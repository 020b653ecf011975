//! The dispatcher: claims jobs for the node's free slots (and ahead of them while attempts
//! are short), holds them, and hands them to the runners in claim order; and the runners.

use super::*;
use crate::store::Holding;

/// Claims while this node may hold more jobs; sleeps on a notice, the next scheduled time, a
/// held job's end or the poll.
///
/// A node holds at most its slots plus what they get through in [`CLAIM_AHEAD_WINDOW`]
/// ([`Shared::hold_limit`]). It claims as soon as a slot would otherwise go idle; while jobs
/// wait for slots, it waits until it can claim at least half of its limit, so that claims stay
/// large when attempts are short: with one claim per attempt, the claims' round trips, not the
/// attempts, would bound the node.
pub(super) async fn dispatch(s: Arc<Shared>) {
    // Before this node claims anything: running jobs under its own id are a predecessor's.
    rescue_predecessors(&s).await;
    let mut notices = s.store.subscribe();
    let mut next_due = NextDue::default();
    loop {
        if s.claiming.is_cancelled() {
            return;
        }
        let limit = s.hold_limit();
        let (held, holding) = holding(&s);
        let slots = s.config.concurrency.max(1);
        let room = limit.saturating_sub(held);
        let want = if may_claim(held, slots, limit) {
            room.min(s.config.claim_batch as usize) as u32
        } else {
            0
        };
        let mut claimed_any = false;
        if want > 0 && s.health.is_blocked() {
            // The store refuses writes: claim again once the kept completions are written.
            tokio::select! {
                _ = s.claiming.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        }
        if want > 0 {
            let lease_ms = i64::try_from(s.config.lease.as_millis()).unwrap_or(i64::MAX);
            match s
                .store
                .claim(&s.config.node_id, want, &holding, now_ms(), lease_ms)
                .await
            {
                Ok(jobs) => {
                    crate::telemetry::claimed(jobs.len());
                    claimed_any = !jobs.is_empty() && jobs.len() as u32 == want;
                    hold(&s, jobs);
                }
                Err(e) => {
                    crate::throttle::error(format!("claim failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        if claimed_any {
            continue;
        }
        if want == 0 {
            // Every slot is busy and jobs wait for them: claim again when enough have ended.
            tokio::select! {
                _ = s.claiming.cancelled() => return,
                _ = s.released.notified() => {}
            }
            continue;
        }
        // Wait for something to do: a notice, a held job's end, a scheduled job coming due.
        let wake_at = match next_due.get(&*s.store).await {
            Some(at) => {
                Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)).min(s.config.poll)
            }
            None => s.config.poll,
        };
        tokio::select! {
            _ = s.claiming.cancelled() => return,
            _ = tokio::time::sleep(wake_at) => {}
            _ = wait_jobs_available(&mut notices) => {}
            // Claimed fewer than asked (the queue is empty) and may claim more: a job's end
            // does not add work, so it is no reason to wake.
        }
    }
}

/// How many jobs this node holds, and what its claim may take of each queue ([`Holding`]):
/// of a queue whose pace it knows, what [`hold_limit`] allows at that pace less what it holds
/// of it; of any other, its slots less what it holds of it.
fn holding(s: &Shared) -> (usize, Holding) {
    let slots = s.config.concurrency.max(1);
    let mut held: Vec<(String, u32)> = Vec::new();
    let total = {
        let running = lock(&s.running);
        for job in running.values() {
            match held.iter_mut().find(|(q, _)| *q == job.queue) {
                Some((_, n)) => *n += 1,
                None => held.push((job.queue.clone(), 1)),
            }
        }
        running.len()
    };
    let paces = lock(&s.queue_pace);
    let mut room: Vec<(String, u32)> = Vec::with_capacity(paces.len() + held.len());
    for (queue, pace) in paces.iter() {
        room.push((
            queue.clone(),
            room_for(slots, *pace, s.config.claim_ahead, &held, queue),
        ));
    }
    for (queue, _) in &held {
        if !paces.contains_key(queue) {
            room.push((
                queue.clone(),
                room_for(slots, 0, s.config.claim_ahead, &held, queue),
            ));
        }
    }
    let other_room = Some(u32::try_from(slots).unwrap_or(u32::MAX));
    (
        total,
        Holding {
            held,
            room,
            other_room,
        },
    )
}

/// What a node may take of `queue` at `pace_us`, holding `held`.
fn room_for(
    slots: usize,
    pace_us: u64,
    claim_ahead: usize,
    held: &[(String, u32)],
    queue: &str,
) -> u32 {
    let of_queue = held
        .iter()
        .find(|(q, _)| q == queue)
        .map_or(0, |(_, n)| *n as usize);
    u32::try_from(hold_limit(slots, pace_us, claim_ahead).saturating_sub(of_queue))
        .unwrap_or(u32::MAX)
}

/// How long the dispatcher trusts its last look at the next scheduled job
/// ([`Store::next_scheduled_at`]) while that job is still in the future.
pub(super) const NEXT_DUE_FRESH: Duration = Duration::from_millis(100);

/// The dispatcher's last look at when the next scheduled job comes due. Under a steady trickle
/// of jobs the dispatcher goes idle after nearly every claim, and looking each time was one
/// more statement per job (on Postgres, a round trip on the way to the next claim). A job
/// scheduled meanwhile by any node is seen at the next look, within [`NEXT_DUE_FRESH`] while
/// jobs keep coming, and at the poll when they do not, as before.
#[derive(Default)]
pub(super) struct NextDue {
    looked: Option<(std::time::Instant, Option<i64>)>,
}

impl NextDue {
    async fn get(&mut self, store: &dyn Store) -> Option<i64> {
        if let Some((at, due)) = self.looked
            && at.elapsed() < NEXT_DUE_FRESH
            && due.is_none_or(|due| due > now_ms())
        {
            return due;
        }
        // A failed look is not kept: the poll covers it.
        let due = store.next_scheduled_at().await.ok()?;
        self.looked = Some((std::time::Instant::now(), due));
        due
    }
}

/// Takes claimed jobs into this node: their leases are renewed and their cancel requests heard
/// from now on; they run in claim order as runners come free.
pub(super) fn hold(s: &Shared, jobs: Vec<Claimed>) {
    if jobs.is_empty() {
        return;
    }
    let since = std::time::Instant::now();
    {
        let mut running = lock(&s.running);
        let mut to_run = lock(&s.to_run);
        for job in jobs {
            tracing::debug!(
                job = job.id,
                attempt = job.attempt,
                "job {} is running",
                job.id
            );
            let cancel = CancelHandle::new();
            running.insert(
                job.id,
                HeldJob {
                    cancel: cancel.clone(),
                    since,
                    attempt: job.attempt,
                    queue: job.queue.clone(),
                },
            );
            to_run.push_back(Held { job, cancel });
        }
    }
    s.to_run_added.notify_waiters();
}

/// One slot: runs held jobs one after another, in claim order, until the node shuts down.
///
/// A job passes from the dispatcher to a runner and from the runner to the completer through
/// queues, with no task of its own: a busy runner takes the next job without waiting or waking
/// anything. (On a node with two slots and short jobs, a task per job and a wake-up of the
/// node's runtime at each job's end cost more than the attempt itself.)
pub(super) async fn runner(s: Arc<Shared>) {
    loop {
        let added = s.to_run_added.notified();
        tokio::pin!(added);
        // Registered before looking, so that jobs added after the look wake this runner.
        added.as_mut().enable();
        // A node that is shutting down starts nothing more: what waits is given back.
        let next = if s.claiming.is_cancelled() {
            None
        } else {
            lock(&s.to_run).pop_front()
        };
        let Some(Held { job, cancel }) = next else {
            tokio::select! {
                _ = added => continue,
                _ = s.shutdown.cancelled() => return,
            }
        };
        if s.shutdown.is_cancelled() {
            // Held and not started when the node began to shut down: no attempt ran, so none
            // is reported; the lease runs out and the job runs elsewhere.
            return;
        }
        let id = job.id;
        run_attempt(&s, job, cancel).await;
        release(&s, id);
    }
}

/// Puts jobs this node holds back in the queue, uncharged (a shutdown), and forgets them.
pub(super) async fn give_back(s: &Shared, jobs: Vec<(JobId, u32)>) {
    if jobs.is_empty() {
        return;
    }
    match s.store.release(&s.config.node_id, &jobs, now_ms()).await {
        Ok(ids) => tracing::info!(
            "shutting down: gave {} jobs back to the queue, their attempts not charged",
            ids.len()
        ),
        Err(e) => tracing::warn!(
            "shutting down: cannot give {} jobs back ({e}); they run again once their leases run out",
            jobs.len()
        ),
    }
    let mut running = lock(&s.running);
    for (id, _) in &jobs {
        running.remove(id);
    }
}

/// A held job is done: it leaves the node, and the dispatcher hears of it when it may claim
/// again (see `dispatch`), not at every job's end.
pub(super) fn release(s: &Shared, id: JobId) {
    let held = {
        let mut running = lock(&s.running);
        running.remove(&id);
        running.len()
    };
    if may_claim(held, s.config.concurrency.max(1), s.hold_limit()) {
        s.released.notify_one();
    }
}

/// Whether a node holding `held` jobs claims more: when a slot would otherwise go idle, or
/// when it has room for at least half of what it may hold (so that claims stay large).
pub(super) fn may_claim(held: usize, slots: usize, limit: usize) -> bool {
    held < slots || limit.saturating_sub(held) >= limit / 2
}

pub(super) async fn wait_jobs_available(notices: &mut tokio::sync::broadcast::Receiver<Notice>) {
    loop {
        match notices.recv().await {
            Ok(Notice::JobsAvailable)
            | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
            Ok(Notice::Events(_) | Notice::Ended(_) | Notice::Run(_) | Notice::RunRequest(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                std::future::pending::<()>().await
            }
        }
    }
}
