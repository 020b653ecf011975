//! The queue as worker nodes drive it: claims, attempts' events, leases, rescue, and the sweep
//! of deadlines and scheduled jobs. Attempts end in `endings.rs`.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use serde_json::json;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};

use super::jobs::push_events;
use super::keys;
use super::{PgStore, lock};
use crate::store::history;
use crate::store::lifecycle::{ending_by_outcome, released_event};
use crate::store::model::*;
use crate::store::queues::{draw, earlier};
use crate::store::rows::{ClaimRow, QueueRow, claimed_in_order, queue_listing};
use crate::store::{Holding, Notice, QueueInfo, QueueSettings, QueueStore, Rescue, Result};

/// The error of a job failed because its deadline passed before it could run.
const DEADLINE_PASSED: &str = "the job's deadline passed before it could run";

/// The longest a node goes between two sweeps of the queue ([`PgStore::sweep`]).
const SWEEP_AT_LEAST_EVERY_MS: i64 = 1000;

/// The claims a store made whose jobs have not all ended yet, so that a claim's row is deleted
/// by the next claim statement once its last job ended, and `claims` holds little more than
/// what runs: the running set is read through it (the rescuer, listing running jobs). The rows
/// of a node that died, or stopped before its jobs ended, are the rescuer's to delete.
#[derive(Default)]
pub(super) struct OpenClaims {
    /// The claim of each job held.
    claim_of: std::collections::HashMap<JobId, i64>,
    /// How many jobs of each claim have not ended, and when it was made.
    left: std::collections::HashMap<i64, (usize, std::time::Instant)>,
    /// Claims whose jobs have all ended, to delete.
    done: Vec<i64>,
    /// When claims older than [`OpenClaims::FORGET_AFTER`] were last let go.
    pruned: Option<std::time::Instant>,
}

impl OpenClaims {
    /// A claim still open after this long is let go: its jobs' ends may never reach this store
    /// (the completer gives up on a batch it cannot write; the rescuer ends those attempts
    /// `lost`), and keeping it would grow these maps for as long as the node runs. A claim let
    /// go while its jobs still run costs nothing but time: the rescuer deletes its row once
    /// they have all left `running`, as for a node that died.
    const FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

    fn claimed(&mut self, claim: i64, jobs: &[Claimed], at: std::time::Instant) {
        for job in jobs {
            self.claim_of.insert(job.id, claim);
        }
        self.left.insert(claim, (jobs.len(), at));
        self.forget_old(at);
    }

    /// Job `id` ended here (or its end was refused: either way this node no longer runs it).
    pub(super) fn ended(&mut self, id: JobId) {
        let Some(claim) = self.claim_of.remove(&id) else {
            return;
        };
        if let Some((left, _)) = self.left.get_mut(&claim) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.left.remove(&claim);
                self.done.push(claim);
            }
        }
    }

    /// Lets go of the claims open for longer than [`OpenClaims::FORGET_AFTER`]; looks at most
    /// once a minute.
    fn forget_old(&mut self, now: std::time::Instant) {
        let minute = std::time::Duration::from_secs(60);
        if self.pruned.is_some_and(|p| now.duration_since(p) < minute) {
            return;
        }
        self.pruned = Some(now);
        let before = self.left.len();
        self.left
            .retain(|_, (_, at)| now.duration_since(*at) < Self::FORGET_AFTER);
        if self.left.len() < before {
            let left = &self.left;
            self.claim_of.retain(|_, claim| left.contains_key(claim));
        }
    }
}

/// The queues with limits (`max_running` or `rate`), as this store last read them: a claim
/// that finds none takes its jobs in one statement; otherwise it locks those queues' rows
/// first ([`PgStore::claim_limited`]). Read again when older than
/// [`LimitedQueues::FRESH`], or at once after this store configured queues; so a limit a
/// process declares applies on every node within that time.
#[derive(Default)]
pub(super) struct LimitedQueues {
    names: Vec<String>,
    read_at: Option<std::time::Instant>,
}

impl LimitedQueues {
    const FRESH: std::time::Duration = std::time::Duration::from_secs(1);
}

/// What a claim statement is given.
struct ClaimArgs<'a> {
    worker: &'a str,
    limit: u32,
    holding: &'a Holding,
    now: i64,
    lease_ms: i64,
    done: &'a [i64],
}

impl ClaimArgs<'_> {
    /// Runs `queue/claim.sql`, with each limited queue's room in `rooms` (at most the node's
    /// own room for it).
    async fn run<'c, E>(&self, exec: E, rooms: &[(String, u32)]) -> Result<Vec<PgRow>>
    where
        E: sqlx::Executor<'c, Database = sqlx::Postgres>,
    {
        let (held_names, held_counts): (Vec<&str>, Vec<i64>) = self
            .holding
            .held
            .iter()
            .map(|(q, n)| (q.as_str(), i64::from(*n)))
            .unzip();
        // The rooms the node gives, each limited queue's within it.
        let mut all: Vec<(&str, u32)> = self
            .holding
            .room
            .iter()
            .map(|(q, n)| (q.as_str(), *n))
            .collect();
        for (q, n) in rooms {
            let mine = self.holding.room_of(q, self.limit);
            match all.iter_mut().find(|(name, _)| name == q) {
                Some((_, room)) => *room = (*room).min(*n),
                None => all.push((q.as_str(), (*n).min(mine))),
            }
        }
        let (room_names, room_counts): (Vec<&str>, Vec<i64>) =
            all.into_iter().map(|(q, n)| (q, i64::from(n))).unzip();
        let other_room = i64::from(self.holding.other_room.unwrap_or(self.limit));
        Ok(sqlx::query(include_str!("queue/claim.sql"))
            .bind(self.worker)
            .bind(self.now + self.lease_ms)
            .bind(self.now)
            .bind(i64::from(self.limit))
            .bind(self.done)
            .bind(serde_json::Value::from(self.worker).to_string())
            .bind(&held_names)
            .bind(&held_counts)
            .bind(&room_names)
            .bind(&room_counts)
            .bind(other_room)
            .fetch_all(exec)
            .await?)
    }
}

impl PgStore {
    /// The queues with limits ([`LimitedQueues`]).
    async fn limited_queues(&self) -> Result<Vec<String>> {
        {
            let known = lock(&self.limited);
            if known
                .read_at
                .is_some_and(|at| at.elapsed() < LimitedQueues::FRESH)
            {
                return Ok(known.names.clone());
            }
        }
        let names: Vec<String> = sqlx::query_scalar(include_str!("queue/limited_queues.sql"))
            .fetch_all(&self.hot)
            .await?;
        *lock(&self.limited) = LimitedQueues {
            names: names.clone(),
            read_at: Some(std::time::Instant::now()),
        };
        Ok(names)
    }

    /// A claim when queues have limits: in one transaction, locks their rows (claims that
    /// may take from them go one at a time), counts their running jobs, gives each its room
    /// ([`QueueSettings::room`]), claims, and draws from the token buckets what it took.
    async fn claim_limited(&self, claim: &ClaimArgs<'_>, limited: &[String]) -> Result<Vec<PgRow>> {
        let mut tx = self.hot.begin().await?;
        let stored: Vec<QueueRow> = sqlx::query_as(include_str!("queue/lock_limited_queues.sql"))
            .bind(limited)
            .fetch_all(&mut *tx)
            .await?;
        let mut queues = Vec::with_capacity(stored.len());
        for row in stored {
            queues.push(row.into_settings(claim.now)?);
        }
        let counted: Vec<&str> = queues
            .iter()
            .filter(|(s, _)| s.max_running.is_some())
            .map(|(s, _)| s.name.as_str())
            .collect();
        let running: std::collections::HashMap<String, i64> = if counted.is_empty() {
            Default::default()
        } else {
            sqlx::query_as(include_str!("queue/running_by_queue.sql"))
                .bind(&counted)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect()
        };
        let rooms: Vec<(String, u32)> = queues
            .iter()
            .map(|(s, tokens)| {
                let running = running.get(&s.name).map_or(0, |n| (*n).max(0) as u64);
                (s.name.clone(), s.room(claim.limit, running, *tokens))
            })
            .collect();
        let rows = claim.run(&mut *tx, &rooms).await?;
        let mut names = Vec::new();
        let mut left = Vec::new();
        let mut look_again = None;
        for ((s, tokens), (_, room)) in queues.iter().zip(&rooms) {
            let Some(tokens) = tokens else { continue };
            let mut taken = 0usize;
            for row in &rows {
                if row.try_get::<&str, _>("queue")? == s.name {
                    taken += 1;
                }
            }
            let (remaining, again) = draw(s, *tokens, *room, taken, claim.now);
            names.push(s.name.as_str());
            left.push(remaining);
            look_again = earlier(look_again, again);
        }
        self.next_token.set(look_again);
        if !names.is_empty() {
            sqlx::query(include_str!("queue/take_tokens.sql"))
                .bind(&names)
                .bind(&left)
                .bind(claim.now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(rows)
    }
}

#[async_trait]
impl QueueStore for PgStore {
    async fn claim(
        &self,
        worker: &str,
        limit: u32,
        holding: &Holding,
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<Claimed>> {
        // First, when it may find something, the sweep (see `sweep`).
        let mut notices = Vec::new();
        if now >= self.next_sweep.load(Ordering::Relaxed) {
            notices = self.sweep(now).await?;
        }
        // Then the claim, with its attempts and `running` events, in one statement (one round
        // trip) when no queue has limits. It ends no job, so it need not wait for its WAL
        // flush: were Postgres to lose it in a crash, its jobs would be queued again, and the
        // completion of any of them (a synchronous commit, later in the WAL) flushes it first.
        let limited = self.limited_queues().await?;
        let done = std::mem::take(&mut lock(&self.open_claims).done);
        let claim = ClaimArgs {
            worker,
            limit,
            holding,
            now,
            lease_ms,
            done: &done,
        };
        let result = if limited.is_empty() {
            self.next_token.set(None);
            claim.run(&self.hot, &[]).await
        } else {
            self.claim_limited(&claim, &limited).await
        };
        let rows = match result {
            Ok(rows) => rows,
            Err(e) => {
                lock(&self.open_claims).done.extend(done);
                return Err(e);
            }
        };
        // Each claimed job leaves a dead queue row, each claim done a dead claims row.
        self.churn
            .fetch_add((rows.len() + done.len()) as u64, Ordering::Relaxed);
        let claim: Option<i64> = match rows.first() {
            Some(row) => row.try_get("claim_id")?,
            None => None,
        };
        let mut rows = rows
            .iter()
            .map(ClaimRow::from_row)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        self.take_settings(&mut rows).await?;
        let claimed = claimed_in_order(rows)?;
        if let Some(claim) = claim {
            lock(&self.open_claims).claimed(claim, &claimed, std::time::Instant::now());
        }
        notices.extend(claimed.iter().map(|c| Notice::Events(c.id)));
        self.notify(notices);
        Ok(claimed)
    }

    async fn configure_queues(&self, queues: &[QueueSettings], now: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for q in queues {
            sqlx::query(include_str!("queue/configure_queue.sql"))
                .bind(&q.name)
                .bind(i64::from(q.weight))
                .bind(q.max_running.map(i64::from))
                .bind(q.rate.map(|r| r.to_string()))
                .bind(q.paused)
                .bind(q.rate.map_or(0.0, |r| r.burst()))
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        lock(&self.limited).read_at = None;
        Ok(())
    }

    async fn queues(&self) -> Result<Vec<QueueInfo>> {
        let stored: Vec<QueueRow> = sqlx::query_as(include_str!("queue/queue_settings.sql"))
            .fetch_all(&self.pool)
            .await?;
        let counts: Vec<(String, String, i64)> =
            sqlx::query_as(include_str!("queue/queue_counts.sql"))
                .fetch_all(&self.pool)
                .await?;
        queue_listing(stored, counts)
    }

    async fn set_queue_paused(
        &self,
        name: &str,
        paused: bool,
        now: i64,
    ) -> Result<Option<QueueInfo>> {
        let Some(mut info) = self
            .queues()
            .await?
            .into_iter()
            .find(|q| q.settings.name == name)
        else {
            return Ok(None);
        };
        sqlx::query(include_str!("queue/pause_queue.sql"))
            .bind(name)
            .bind(paused)
            .bind(now)
            .execute(&self.pool)
            .await?;
        if !paused {
            // Nodes that found nothing they could take look again.
            self.notify([Notice::JobsAvailable]);
        }
        info.settings.paused = paused;
        Ok(Some(info))
    }

    async fn append_events(
        &self,
        id: JobId,
        worker: &str,
        attempt: u32,
        events: &[NewEvent],
        now: i64,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let holds: Option<i64> = sqlx::query_scalar(include_str!("queue/holds.sql"))
            .bind(id)
            .bind(worker)
            .bind(i64::from(attempt))
            .fetch_optional(&mut *tx)
            .await?;
        if holds.is_none() {
            return Ok(false);
        }
        push_events(&mut tx, id, events, now).await?;
        tx.commit().await?;
        self.notify([Notice::Events(id)]);
        Ok(true)
    }

    async fn complete(&self, completions: &[Completion], now: i64) -> Result<Vec<Completed>> {
        let mut results = vec![Completed::Refused; completions.len()];
        // Attempts whose outcome alone decides their job's end (nearly all: they succeeded)
        // need no read of the job: one statement, fenced, ends them. The others are decided
        // on the job's row, read under lock. A job twice in one batch goes the second way the
        // second time, where the fence refuses it.
        let mut settled = Vec::new();
        let mut read = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, c) in completions.iter().enumerate() {
            match ending_by_outcome(c, now) {
                Some(ending) if seen.insert(c.job_id) => settled.push((i, c, ending)),
                _ => read.push((i, c)),
            }
        }
        if !settled.is_empty() {
            self.complete_settled(settled, now, &mut results).await?;
        }
        if !read.is_empty() {
            self.complete_read(&read, now, &mut results, None).await?;
        }
        {
            let mut open = lock(&self.open_claims);
            for c in completions {
                open.ended(c.job_id);
            }
        }
        // A job's end may leave room in a queue with `max_running`: idle nodes look again.
        if !lock(&self.limited).names.is_empty() {
            self.notify([Notice::JobsAvailable]);
        }
        Ok(results)
    }

    async fn heartbeat(
        &self,
        worker: &str,
        jobs: &[JobId],
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<(JobId, bool)>> {
        // Skips rows others hold locked, and never waits (waiting deadlocked with
        // completions, whose row order the planner decides). A lease is renewed once half of
        // it is spent, not at every beat: a node holding a few hundred short jobs would
        // rewrite each of their rows four times a second.
        Ok(sqlx::query_as(include_str!("queue/heartbeat.sql"))
            .bind(now + lease_ms)
            .bind(worker)
            .bind(jobs)
            .bind(now + lease_ms / 2)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn rescue(&self, which: Rescue<'_>, now: i64) -> Result<Vec<JobId>> {
        let done = sqlx::query(include_str!("queue/delete_done_claims.sql"))
            .execute(&self.pool)
            .await?
            .rows_affected();
        self.churn.fetch_add(done, Ordering::Relaxed);
        // Attempts whose lease ran out (or whose worker is gone) end `lost`, decided and
        // written as any other ending that depends on its job; an expired lease is checked
        // again under the row's lock.
        let (running, expired_before): (Vec<(i64, i64, Option<String>)>, _) = match which {
            Rescue::Expired { keep } => (
                sqlx::query_as(include_str!("queue/expired.sql"))
                    .bind(now)
                    .bind(keep)
                    .fetch_all(&self.pool)
                    .await?,
                Some(now),
            ),
            Rescue::Workers(workers) => (
                sqlx::query_as(include_str!("queue/running_of_workers.sql"))
                    .bind(workers)
                    .fetch_all(&self.pool)
                    .await?,
                None,
            ),
        };
        if running.is_empty() {
            return Ok(Vec::new());
        }
        let lost: Vec<Completion> = running
            .into_iter()
            .map(|(id, attempts, worker)| Completion::lost(id, attempts, worker))
            .collect();
        let batch: Vec<(usize, &Completion)> = lost.iter().enumerate().collect();
        let mut results = vec![Completed::Refused; lost.len()];
        self.complete_read(&batch, now, &mut results, expired_before)
            .await?;
        Ok(lost
            .iter()
            .zip(results)
            .filter(|(_, r)| matches!(r, Completed::Applied(_)))
            .map(|(c, _)| c.job_id)
            .collect())
    }

    async fn running_workers(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar(include_str!("queue/running_workers.sql"))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn release(&self, worker: &str, jobs: &[(JobId, u32)], now: i64) -> Result<Vec<JobId>> {
        let (ids, attempts): (Vec<i64>, Vec<i64>) =
            jobs.iter().map(|&(id, a)| (id, i64::from(a))).unzip();
        let released: Vec<i64> = sqlx::query_scalar(include_str!("queue/release.sql"))
            .bind(&ids)
            .bind(&attempts)
            .bind(now)
            .bind(worker)
            .bind(history::tail(&released_event(worker)))
            .fetch_all(&self.pool)
            .await?;
        {
            let mut open = lock(&self.open_claims);
            for id in &released {
                open.ended(*id);
            }
        }
        let mut notices: Vec<Notice> = released.iter().map(|id| Notice::Events(*id)).collect();
        if !released.is_empty() {
            notices.push(Notice::JobsAvailable);
        }
        self.notify(notices);
        Ok(released)
    }

    async fn probe_write(&self, node: &str, now: i64) -> Result<()> {
        sqlx::query(include_str!("queue/probe_write.sql"))
            .bind(node)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn report_activity(&self, report: &ActivityReport, now: i64) -> Result<()> {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let column = |f: fn(&MinuteEnds) -> u64| -> Vec<i64> {
            report.minutes.iter().map(|m| n(f(m))).collect()
        };
        sqlx::query(include_str!("queue/report_activity.sql"))
            .bind(&report.node)
            .bind(now)
            .bind(n(report.slots))
            .bind(n(report.busy))
            .bind(
                report
                    .minutes
                    .iter()
                    .map(|m| m.minute)
                    .collect::<Vec<i64>>(),
            )
            .bind(column(|m| m.succeeded))
            .bind(column(|m| m.failed))
            .bind(column(|m| m.cancelled))
            .bind(now - crate::store::ACTIVITY_KEPT_MS)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn next_scheduled_at(&self) -> Result<Option<i64>> {
        let next: Option<i64> = sqlx::query_scalar(include_str!("queue/next_scheduled_at.sql"))
            .fetch_one(&self.pool)
            .await?;
        // The dispatcher wakes then to claim it, and the claim must sweep it into the queue
        // (another node may have scheduled it).
        if let Some(at) = next {
            self.sweep_by(at);
        }
        Ok(self.next_token.earliest(next))
    }

    async fn tidy_queue(&self) -> Result<bool> {
        self.vacuum_queue().await
    }
}

impl PgStore {
    /// In a transaction of its own: fails the waiting jobs whose overall deadline passed and
    /// queues the scheduled jobs that came due; returns the notices to send. Then notes when
    /// the next sweep may find something: the earliest deadline or scheduled time left, and no
    /// later than [`SWEEP_AT_LEAST_EVERY_MS`] from now (for jobs other nodes add).
    ///
    /// Claims sweep only when that time has come: sweeping before every claim cost about as
    /// much as the claim itself (the statement is planned on every call and nearly always
    /// finds nothing). A claim never starts a job whose deadline passed, swept or not; this
    /// node's own scheduled jobs, retries and deadlines bring the next sweep forward
    /// (`sweep_by`), and so does the dispatcher's look at the next scheduled job
    /// (`next_scheduled_at`), which sees every node's.
    async fn sweep(&self, now: i64) -> Result<Vec<Notice>> {
        self.next_sweep
            .store(now + SWEEP_AT_LEAST_EVERY_MS, Ordering::Relaxed);
        let failed = NewEvent::state(JobState::Failed, json!({ "error": DEADLINE_PASSED }));
        let queued = NewEvent::state(JobState::Queued, json!({}));
        let mut tx = self.pool.begin().await?;
        let swept: Vec<(i64, bool, Option<String>)> =
            sqlx::query_as(include_str!("queue/sweep.sql"))
                .bind(DEADLINE_PASSED)
                .bind(now)
                .bind(history::tail(&failed))
                .bind(history::tail(&queued))
                .fetch_all(&mut *tx)
                .await?;
        // The places of the concurrency keys that jobs past their deadline held go on.
        let ended_keys: Vec<String> = swept.iter().filter_map(|(_, _, k)| k.clone()).collect();
        let mut notices = Vec::new();
        if keys::release(&mut tx, &ended_keys, self).await? {
            notices.push(Notice::JobsAvailable);
        }
        tx.commit().await?;
        self.churn.fetch_add(swept.len() as u64, Ordering::Relaxed);
        for (id, ended, _) in swept {
            notices.push(Notice::Events(id));
            if ended {
                crate::telemetry::job_ended_waiting(id, JobState::Failed, DEADLINE_PASSED);
                notices.push(Notice::Ended(id));
            }
        }
        let next: std::result::Result<Option<i64>, _> =
            sqlx::query_scalar(include_str!("queue/next_sweep.sql"))
                .fetch_one(&self.pool)
                .await;
        match next {
            Ok(Some(at)) => self.sweep_by(at),
            Ok(None) => {}
            // The sweep itself committed: its notices still go out, and the next sweep comes
            // within the second.
            Err(e) => tracing::warn!("cannot read the next time to sweep the queue: {e}"),
        }
        Ok(notices)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn claimed(ids: &[JobId]) -> Vec<Claimed> {
        ids.iter()
            .map(|&id| Claimed {
                id,
                module_digest: String::new(),
                queue: String::new(),
                input: Vec::new(),
                limits: Default::default(),
                grants: Default::default(),
                attempt: 1,
                deadline_at: None,
                input_from: None,
                ready_at: 0,
                started_at: 0,
                created_at: 0,
                keyed: false,
            })
            .collect()
    }

    #[test]
    fn a_claim_is_done_once_each_of_its_jobs_ended() {
        let mut open = OpenClaims::default();
        let t = Instant::now();
        open.claimed(7, &claimed(&[1, 2]), t);
        open.ended(1);
        assert!(open.done.is_empty(), "job 2 still runs");
        open.ended(2);
        open.ended(2);
        assert_eq!(open.done, vec![7], "done once, however often a job ends");
    }

    #[test]
    fn claims_whose_ends_never_came_are_let_go() {
        let mut open = OpenClaims::default();
        let t = Instant::now();
        // Claim 1's job never ends here (its completion was given up on).
        open.claimed(1, &claimed(&[10]), t);
        open.claimed(2, &claimed(&[20]), t + Duration::from_secs(30));
        assert_eq!(open.left.len(), 2, "nothing is old yet");
        let later = t + OpenClaims::FORGET_AFTER + Duration::from_secs(1);
        open.claimed(3, &claimed(&[30]), later);
        assert!(!open.left.contains_key(&1), "claim 1 was let go");
        assert!(!open.claim_of.contains_key(&10), "and its job with it");
        assert!(open.left.contains_key(&2) && open.left.contains_key(&3));
        // A late end of a let-go job changes nothing; the others still count.
        open.ended(10);
        open.ended(20);
        open.ended(30);
        assert_eq!(open.done, vec![2, 3]);
    }
}
