//! Jobs as users see them: submission, reading, history, cancel, retry and retention; and the
//! writes of a job's events that every area uses.

use async_trait::async_trait;
use rusqlite::params;
use serde_json::json;
use tokio::sync::broadcast;

use super::{SqliteStore, Tx, in_transaction, query, rows, scalar};
use crate::store::history;
use crate::store::lifecycle::{
    Inserted, PendingEvent, Retried, attempts_of, created_event, initial_state, pending, retried,
    transition_at,
};
use crate::store::model::*;
use crate::store::rows::{EventRow, JobRow};
use crate::store::settings::{SETTINGS_GRACE_MS, Settings};
use crate::store::{JobStore, Notice, Result, StoreError};

#[async_trait]
impl JobStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    fn relay(&self) -> Option<Box<dyn crate::store::NoticeRelay>> {
        None
    }

    async fn insert_jobs(&self, jobs: Vec<NewJob>, now: i64) -> Result<Vec<(Job, bool)>> {
        let (out, notices) = self.write(|tx| insert_jobs_tx(tx, jobs, now)).await?;
        self.notify(notices);
        Ok(out)
    }

    async fn insert_jobs_named(
        &self,
        jobs: Vec<NewJob>,
        names: &[(String, String)],
        now: i64,
    ) -> Result<Option<Vec<(Job, bool)>>> {
        // The names are checked in the insert's transaction: no name can move in between.
        let inserted = self
            .write(|tx| {
                for (name, digest) in names {
                    let current: Option<String> =
                        scalar(tx, include_str!("modules/name_digest.sql"), [name])?;
                    if current.as_deref() != Some(digest.as_str()) {
                        return Ok(None);
                    }
                }
                insert_jobs_tx(tx, jobs, now).map(Some)
            })
            .await?;
        let Some((out, notices)) = inserted else {
            return Ok(None);
        };
        self.notify(notices);
        Ok(Some(out))
    }

    async fn job_output(&self, id: JobId) -> Result<Option<Vec<u8>>> {
        self.read(|tx| {
            Ok(scalar::<Option<Vec<u8>>>(tx, include_str!("jobs/output.sql"), [id])?.flatten())
        })
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.read(|tx| fetch_job(tx, id))
    }

    async fn attempts(&self, id: JobId) -> Result<Vec<Attempt>> {
        type Row = (String, String, i64, Option<String>, Option<i64>);
        let row: Option<Row> = self.read(|tx| {
            Ok(query(tx, include_str!("jobs/attempts.sql"), [id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .pop())
        })?;
        let Some((ended, state, attempts, worker, started)) = row else {
            return Ok(Vec::new());
        };
        attempts_of(id, &ended, &state, attempts, worker, started)
    }

    async fn list_jobs(&self, f: &JobFilter) -> Result<Vec<Job>> {
        let rows: Vec<JobRow> = self.read(|tx| {
            rows(
                tx,
                include_str!("jobs/list.sql"),
                params![
                    f.state.map(JobState::as_str),
                    f.module_digest,
                    f.cursor,
                    i64::from(f.limit),
                    f.queue
                ],
            )
        })?;
        rows.into_iter().map(JobRow::into_job).collect()
    }

    async fn activity(&self, since: i64, seen_since: i64) -> Result<Activity> {
        let (minutes, nodes): (Vec<(i64, i64, i64, i64)>, Vec<(String, i64, i64, i64)>) = self
            .read_blocking(move |tx| {
                let minutes = query(
                    tx,
                    include_str!("jobs/activity_minutes.sql"),
                    [since],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?;
                let nodes = query(
                    tx,
                    include_str!("jobs/activity_nodes.sql"),
                    [seen_since],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?;
                Ok((minutes, nodes))
            })
            .await?;
        Ok(crate::store::rows::activity(minutes, nodes))
    }

    async fn count_unfinished(&self) -> Result<[(JobState, u64); 3]> {
        let row = self
            .read_blocking(|tx| {
                Ok(tx
                    .prepare_cached(include_str!("jobs/count_unfinished.sql"))?
                    .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?)
            })
            .await?;
        Ok(crate::store::rows::unfinished_counts(row))
    }

    async fn count_by_state(&self) -> Result<Vec<(JobState, u64)>> {
        let rows: Vec<(String, i64)> = self
            .read_blocking(|tx| {
                query(tx, include_str!("jobs/count_by_state.sql"), [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
            })
            .await?;
        rows.into_iter()
            .map(|(s, n)| {
                let state = s.parse().map_err(|e: String| StoreError::Corrupt(e))?;
                Ok((state, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }

    async fn events(&self, id: JobId, after: i64, limit: u32) -> Result<Vec<Event>> {
        // The state events in the job's history, and the others (logs, progress, cancel
        // requests) in `events`, merged by seq.
        let (history, rows): (Option<String>, Vec<EventRow>) = self.read(|tx| {
            let history = scalar(tx, include_str!("jobs/history.sql"), [id])?;
            let rows = rows(
                tx,
                include_str!("jobs/events.sql"),
                params![id, after, i64::from(limit)],
            )?;
            Ok((history, rows))
        })?;
        let others = rows
            .into_iter()
            .map(EventRow::into_event)
            .collect::<Result<Vec<_>>>()?;
        let state = history::parse(id, history.as_deref().unwrap_or_default(), after)?;
        Ok(history::merge(state, others, limit as usize))
    }

    async fn cancel(&self, id: JobId, now: i64) -> Result<JobState> {
        let (before, after, freed) = self
            .write(|tx| {
                let job = fetch_job(tx, id)?.ok_or(StoreError::NotFound {
                    what: "job",
                    id: id.to_string(),
                })?;
                let now = transition_at(&job, now);
                let mut freed = false;
                let state = match job.state {
                    JobState::Scheduled | JobState::Queued => {
                        tx.prepare_cached(include_str!("jobs/cancel_waiting.sql"))?
                            .execute(params![now, id])?;
                        let e = NewEvent::state(JobState::Cancelled, json!({}));
                        push_events(tx, id, &[e], now)?;
                        if let Some(c) = &job.concurrency {
                            freed = super::keys::ended(tx, id, &c.key, job.waiting_for_key)?;
                        }
                        JobState::Cancelled
                    }
                    JobState::Running if !job.cancel_requested => {
                        tx.prepare_cached(include_str!("jobs/request_cancel.sql"))?
                            .execute(params![now, id])?;
                        let e = NewEvent {
                            kind: "cancel_requested",
                            data: json!({ "attempt": job.attempts }),
                        };
                        push_events(tx, id, &[e], now)?;
                        JobState::Running
                    }
                    JobState::Running | JobState::Cancelled => job.state,
                    done @ (JobState::Succeeded | JobState::Failed) => {
                        return Err(StoreError::Conflict(format!(
                            "job {id} already finished: it is {done}"
                        )));
                    }
                };
                Ok((job.state, state, freed))
            })
            .await?;
        if after == JobState::Cancelled && before != JobState::Cancelled {
            crate::telemetry::job_ended_waiting(id, after, "cancelled while waiting");
            self.notify([Notice::Events(id), Notice::Ended(id)]);
            if freed {
                self.notify([Notice::JobsAvailable]);
            }
        } else {
            self.notify([Notice::Events(id)]);
        }
        Ok(after)
    }

    async fn retry(&self, id: JobId, now: i64) -> Result<JobState> {
        let waits = self
            .write(|tx| {
                let Retried {
                    settings,
                    concurrency,
                    at: now,
                } = retried(id, fetch_job(tx, id)?, now)?;
                store_settings(tx, &settings, now)?;
                let waits = super::keys::waits(tx, concurrency.as_ref())?;
                tx.prepare_cached(include_str!("jobs/retry.sql"))?
                    .execute(params![&settings.key[..], now, id, waits])?;
                let e = NewEvent::state(JobState::Queued, json!({ "retried": true }));
                push_events(tx, id, &[e], now)?;
                Ok(waits)
            })
            .await?;
        if waits {
            self.notify([Notice::Events(id)]);
        } else {
            self.notify([Notice::Events(id), Notice::JobsAvailable]);
        }
        Ok(JobState::Queued)
    }

    async fn prune(&self, before: i64) -> Result<u64> {
        // Retention may delete many rows: on a blocking thread, holding the writer.
        let conn = self.writer.clone().lock_owned().await;
        let prune = move || {
            let mut conn = conn;
            in_transaction(&mut conn, |tx| {
                tx.execute(include_str!("jobs/prune_events.sql"), [before])?;
                let n = tx.execute(include_str!("jobs/prune_jobs.sql"), [before])?;
                // A submission and retention never overlap (one writer), and a submission
                // marks the settings it stores used: the grace only mirrors Postgres's.
                tx.execute(
                    include_str!("jobs/prune_settings.sql"),
                    [before.saturating_sub(SETTINGS_GRACE_MS)],
                )?;
                tx.execute(include_str!("jobs/prune_runs.sql"), [before])?;
                Ok(n as u64)
            })
        };
        tokio::task::spawn_blocking(prune)
            .await
            .map_err(|e| StoreError::Corrupt(format!("retention stopped: {e}")))?
    }
}

/// Appends events to a job's history under the job row's lock; seq continues without gaps.
pub(super) fn push_events(tx: &Tx<'_>, job_id: JobId, events: &[NewEvent], now: i64) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let last: i64 = scalar(
        tx,
        include_str!("jobs/reserve_seqs.sql"),
        params![events.len() as i64, job_id],
    )?
    .ok_or_else(|| StoreError::Corrupt(format!("job {job_id} vanished")))?;
    write_events(tx, &pending(job_id, last, events, now))
}

/// Writes events (their seqs allocated): a state change as a line of its job's history, any
/// other event as a row of `events` (one cached statement each, run once per event).
pub(super) fn write_events(tx: &Tx<'_>, rows: &[PendingEvent]) -> Result<()> {
    let mut row = tx.prepare_cached(include_str!("jobs/insert_event.sql"))?;
    let mut line = tx.prepare_cached(include_str!("jobs/append_history.sql"))?;
    for (job, seq, kind, data, at) in rows {
        if *kind == "state" {
            let text = format!("[{seq},{at},{}\n", history::tail_text(data));
            line.execute(params![text, job])?;
        } else {
            row.execute(params![job, seq, kind, data, at])?;
        }
    }
    Ok(())
}

/// Stores `settings` if they are not stored yet, marked used at `now`.
fn store_settings(tx: &Tx<'_>, settings: &Settings, now: i64) -> Result<()> {
    tx.prepare_cached(include_str!("jobs/store_settings.sql"))?
        .execute(params![
            &settings.key[..],
            settings.limits,
            settings.retry,
            settings.grants,
            now
        ])?;
    Ok(())
}

/// Inserts jobs and their first events inside `tx`; returns them and the notices to send once
/// `tx` commits. Used by job submission and by the workflow engine's steps.
pub(super) fn insert_jobs_tx(tx: &Tx<'_>, jobs: Vec<NewJob>, now: i64) -> Result<Inserted> {
    let mut out = Vec::with_capacity(jobs.len());
    let mut notices = Vec::new();
    let mut any_queued = false;
    // Jobs submitted together nearly always share their settings: stored once per run of them.
    let mut last: Option<Settings> = None;
    for j in jobs {
        if let Some(key) = &j.idempotency_key {
            let existing: Option<i64> =
                scalar(tx, include_str!("jobs/by_idempotency_key.sql"), [key])?;
            if let Some(id) = existing {
                let job =
                    fetch_job(tx, id)?.ok_or_else(|| StoreError::Corrupt("job vanished".into()))?;
                out.push((job, false));
                continue;
            }
        }
        let (state, run_at) = initial_state(&j, now);
        let settings = Settings::of(&j);
        if last.as_ref().is_none_or(|l| l.key != settings.key) {
            store_settings(tx, &settings, now)?;
        }
        let waits = super::keys::waits(tx, j.concurrency.as_ref())?;
        let id: i64 = scalar(
            tx,
            include_str!("jobs/insert.sql"),
            params![
                j.module_digest,
                state.as_str(),
                j.priority,
                run_at,
                j.input,
                &settings.key[..],
                j.idempotency_key,
                j.deadline_at,
                j.workflow_ref,
                j.input_from,
                now,
                history::line(1, now, &created_event(state, run_at)),
                j.queue,
                j.concurrency.as_ref().map(|c| &c.key),
                j.concurrency.as_ref().map(|c| c.limit),
                waits,
            ],
        )?
        .ok_or_else(|| StoreError::Corrupt("insert returned no id".into()))?;
        last = Some(settings);
        any_queued |= state == JobState::Queued && !waits;
        notices.push(Notice::Events(id));
        let mut job = Job::inserted(id, j, state, run_at, now);
        job.waiting_for_key = waits;
        out.push((job, true));
    }
    if any_queued {
        notices.push(Notice::JobsAvailable);
    }
    Ok((out, notices))
}

pub(super) fn fetch_job(tx: &Tx<'_>, id: JobId) -> Result<Option<Job>> {
    let row: Option<JobRow> = rows(tx, include_str!("jobs/get.sql"), [id])?.pop();
    row.map(JobRow::into_job).transpose()
}
