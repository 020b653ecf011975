//! The ends of attempts: those whose outcome alone decides their job's end, written without a
//! read (`complete_settled`), and those that depend on the job's row (`complete_read`: retries,
//! deadlines, cancel requests, the rescuer's `lost`), both with one statement.

use sqlx::{Executor, Postgres};

use super::PgStore;
use crate::store::history;
use crate::store::lifecycle::{Ending, EndingSnapshot, ending};
use crate::store::model::*;
use crate::store::settings::settings_not_stored;
use crate::store::{Notice, Result};

/// Attempt endings as columns, for [`write_endings`]: per job, the fence (worker, attempt),
/// the job's new columns, the attempt's figures, its state event (written into the job's row)
/// and the notices its end announces; per other event (the attempt's logs), its job, how far
/// before the job's last seq it goes, and its kind and data.
#[derive(Default)]
struct Endings<'a> {
    id: Vec<i64>,
    attempt: Vec<i64>,
    worker: Vec<&'a str>,
    state: Vec<&'static str>,
    outcome: Vec<&'static str>,
    error: Vec<Option<&'a str>>,
    output: Vec<Option<&'a [u8]>>,
    run_at: Vec<Option<i64>>,
    finished_at: Vec<Option<i64>>,
    event_count: Vec<i64>,
    state_event: Vec<String>,
    /// The ended attempt's line in the job's row up to its start and end times, which the
    /// statement appends (they are the row's to clamp): see `history::attempt_head`.
    attempt_head: Vec<String>,
    notices: Vec<Vec<Notice>>,
    event_job: Vec<i64>,
    event_back: Vec<i64>,
    event_kind: Vec<&'static str>,
    event_data: Vec<String>,
    /// Some job has a concurrency key.
    keyed: bool,
}

impl<'a> Endings<'a> {
    /// Retries that wait for a time bring the next sweep forward to it.
    fn sweep_by(&self, store: &PgStore) {
        for (state, run_at) in self.state.iter().zip(&self.run_at) {
            if *state == JobState::Scheduled.as_str()
                && let Some(at) = run_at
            {
                store.sweep_by(*at);
            }
        }
    }

    /// The notices of the endings written (by job id), to send once they are committed.
    fn notices_of(&mut self, written: &[i64]) -> Vec<Notice> {
        let at: std::collections::HashMap<i64, usize> =
            self.id.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        written
            .iter()
            .filter_map(|id| at.get(id))
            .flat_map(|&i| std::mem::take(&mut self.notices[i]))
            .collect()
    }

    fn push(&mut self, c: &'a Completion, e: Ending) {
        self.keyed |= c.keyed;
        let mut notices = vec![Notice::Events(c.job_id)];
        if e.state.is_final() {
            notices.push(Notice::Ended(c.job_id));
        }
        if e.state == JobState::Scheduled {
            notices.push(Notice::JobsAvailable);
        }
        self.notices.push(notices);
        // The state event comes last and goes into the job's row; the attempt's own events
        // before it go to `events`.
        let logged = &c.events;
        let n = logged.len() + 1;
        for (k, event) in logged.iter().enumerate() {
            self.event_job.push(c.job_id);
            self.event_back.push((n - 1 - k) as i64);
            self.event_kind.push(event.kind);
            self.event_data.push(event.data.to_string());
        }
        self.state_event.push(history::tail_text(&e.state_data));
        self.id.push(c.job_id);
        self.attempt.push(i64::from(c.attempt));
        self.worker.push(&c.worker);
        self.state.push(e.state.as_str());
        self.outcome.push(c.outcome.as_str());
        self.error.push(c.error.as_deref());
        self.output.push(e.keep_output.then_some(&c.output[..]));
        self.run_at.push(e.run_at);
        self.finished_at.push(e.finished_at);
        self.event_count.push(n as i64);
        self.attempt_head.push(history::attempt_head(c));
    }
}

/// Writes attempt endings with one statement (`queue/end_attempts.sql`), in which the ends of
/// jobs with concurrency keys hand their places on; returns the ids of the jobs written (their
/// notices: [`Endings::notices_of`]; the others were fenced out), and whether a job that took
/// a place is queued. The sweep comes for the jobs that took places and wait for a time.
async fn write_endings<'c, E>(
    exec: E,
    e: &Endings<'_>,
    now: i64,
    store: &PgStore,
) -> Result<(Vec<i64>, bool)>
where
    E: Executor<'c, Database = Postgres>,
{
    let rows: Vec<(i64, bool, Option<i64>, Option<i64>)> =
        sqlx::query_as(include_str!("queue/end_attempts.sql"))
            .bind(&e.id)
            .bind(&e.attempt)
            .bind(&e.worker)
            .bind(&e.state)
            .bind(&e.outcome)
            .bind(&e.error)
            .bind(&e.output)
            .bind(&e.run_at)
            .bind(&e.finished_at)
            .bind(&e.event_count)
            .bind(&e.attempt_head)
            .bind(now)
            .bind(&e.event_job)
            .bind(&e.event_back)
            .bind(&e.event_kind)
            .bind(&e.event_data)
            .bind(&e.state_event)
            .bind(e.keyed)
            .fetch_all(exec)
            .await?;
    let mut available = false;
    if let Some((_, ready, wake, deadline)) = rows.first() {
        available = *ready;
        for at in [wake, deadline].into_iter().flatten() {
            store.sweep_by(*at);
        }
    }
    Ok((rows.into_iter().map(|(id, ..)| id).collect(), available))
}

/// What the end of a running attempt depends on (`queue/lock_attempts.sql`).
#[derive(sqlx::FromRow)]
struct Snap {
    id: i64,
    state: String,
    attempts: i64,
    worker: Option<String>,
    retry: Option<String>,
    cancel_requested: bool,
    deadline_at: Option<i64>,
    lease_until: Option<i64>,
    lost_attempts: i64,
    concurrency_key: Option<String>,
}

impl PgStore {
    /// Ends jobs whose attempts' outcomes decided their end (`retry::decided_by_outcome`)
    /// without reading their rows first: one statement, its own transaction, fenced in its
    /// `WHERE`.
    pub(super) async fn complete_settled(
        &self,
        mut settled: Vec<(usize, &Completion, Ending)>,
        now: i64,
        results: &mut [Completed],
    ) -> Result<()> {
        // In id order, so that two batches that meet lock their rows in the same order. (The
        // heartbeat skips rows held by others, so it never waits on a completion.)
        settled.sort_by_key(|(_, c, _)| c.job_id);
        let mut endings = Endings::default();
        let mut states = std::collections::HashMap::new();
        for (i, c, ending) in settled {
            states.insert(c.job_id, (i, ending.state));
            endings.push(c, ending);
        }
        endings.sweep_by(self);
        let (written, freed) = write_endings(&self.hot, &endings, now, self).await?;
        for id in &written {
            if let Some((i, state)) = states.get(id) {
                results[*i] = Completed::Applied(*state);
            }
        }
        let mut notices = endings.notices_of(&written);
        if freed {
            notices.push(Notice::JobsAvailable);
        }
        self.notify(notices);
        Ok(())
    }

    /// Ends jobs whose attempts' ends depend on the job (retry policy, deadline, cancel
    /// request): reads and locks their rows, decides, then writes with [`write_endings`] in
    /// the same transaction. With `expired_before` (the rescuer), only attempts whose lease
    /// ran out before it are ended: a lease renewed since the rescuer looked is left alone.
    pub(super) async fn complete_read(
        &self,
        completions: &[(usize, &Completion)],
        now: i64,
        results: &mut [Completed],
        expired_before: Option<i64>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let mut ids: Vec<i64> = completions.iter().map(|(_, c)| c.job_id).collect();
        ids.sort_unstable();
        ids.dedup();
        // Rows are locked in id order (the heartbeat skips rows held by others).
        let snaps: Vec<Snap> = sqlx::query_as(include_str!("queue/lock_attempts.sql"))
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
        let snaps: std::collections::HashMap<i64, Snap> =
            snaps.into_iter().map(|s| (s.id, s)).collect();
        let mut done = std::collections::HashSet::new();
        let mut endings = Endings::default();
        for &(i, c) in completions {
            let Some(snap) = snaps.get(&c.job_id) else {
                continue;
            };
            // The fence: still running this very attempt, on this worker (with its lease run
            // out, for the rescuer); once per batch.
            let expired = match expired_before {
                Some(t) => snap.lease_until.is_some_and(|l| l < t),
                None => true,
            };
            if snap.state != "running"
                || snap.attempts != i64::from(c.attempt)
                || snap.worker.as_deref() != Some(c.worker.as_str())
                || !expired
                || !done.insert(c.job_id)
            {
                continue;
            }
            let ending = ending(
                EndingSnapshot {
                    attempts: snap.attempts,
                    lost_attempts: snap.lost_attempts,
                    retry: snap
                        .retry
                        .as_deref()
                        .ok_or_else(|| settings_not_stored(c.job_id))?,
                    cancel_requested: snap.cancel_requested,
                    deadline_at: snap.deadline_at,
                },
                c,
                now,
            )?;
            results[i] = Completed::Applied(ending.state);
            // The rescuer's endings do not know whether the job has a key: its row does.
            endings.keyed |= snap.concurrency_key.is_some();
            endings.push(c, ending);
        }
        // The rows are locked and fenced above: every one of them is written.
        let (written, freed) = if endings.id.is_empty() {
            (Vec::new(), false)
        } else {
            endings.sweep_by(self);
            write_endings(&mut *tx, &endings, now, self).await?
        };
        tx.commit().await?;
        let mut notices = endings.notices_of(&written);
        if freed {
            notices.push(Notice::JobsAvailable);
        }
        self.notify(notices);
        Ok(())
    }
}
