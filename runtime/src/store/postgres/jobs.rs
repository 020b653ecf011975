//! Jobs as users see them: submission, reading, history, cancel, retry and retention.

use async_trait::async_trait;
use serde_json::json;
use sqlx::{Executor, Postgres};
use tokio::sync::broadcast;

use super::keys;
use super::settings::touch_settings;
use super::{PgStore, Tx, lock};
use crate::store::history;
use crate::store::lifecycle::{
    Inserted, Retried, attempts_of, created_event, initial_state, retried, transition_at,
};
use crate::store::model::*;
use crate::store::rows::{EventRow, JobRow};
use crate::store::settings::{SETTINGS_GRACE_MS, Settings};
use crate::store::{JobStore, Notice, Result, StoreError};

#[async_trait]
impl JobStore for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    fn relay(&self) -> Option<Box<dyn crate::store::NoticeRelay>> {
        self.take_relay()
    }

    async fn insert_jobs(&self, jobs: Vec<NewJob>, now: i64) -> Result<Vec<(Job, bool)>> {
        self.insert_jobs_named(jobs, &[], now)
            .await?
            .ok_or_else(refused_without_names)
    }

    async fn insert_jobs_named(
        &self,
        jobs: Vec<NewJob>,
        names: &[(String, String)],
        now: i64,
    ) -> Result<Option<Vec<(Job, bool)>>> {
        let out = if jobs.iter().all(|j| j.idempotency_key.is_none()) {
            // The usual submission group: one statement, one transaction.
            let batch: Vec<(NewJob, JobState, i64)> = jobs
                .into_iter()
                .map(|j| {
                    let (state, run_at) = initial_state(&j, now);
                    (j, state, run_at)
                })
                .collect();
            let texts = Texts::of(&batch, now);
            // Touched in a transaction of their own, before the jobs that rely on them.
            let touch = lock(&self.settings).untouched(&texts.settings, now);
            if !touch.is_empty() {
                touch_settings(&self.hot, &touch, now).await?;
                lock(&self.settings).touched(touch, now);
            }
            let Some((ids, waits)) = insert_keyless(&self.hot, &batch, &texts, names, now).await?
            else {
                return Ok(None);
            };
            if batch
                .iter()
                .zip(&waits)
                .any(|((_, state, _), waits)| *state == JobState::Queued && !waits)
            {
                self.notify([Notice::JobsAvailable]);
            }
            ids.into_iter()
                .zip(batch)
                .zip(waits)
                .map(|((id, (j, state, run_at)), waits)| {
                    let mut job = Job::inserted(id, j, state, run_at, now);
                    job.waiting_for_key = waits;
                    (job, true)
                })
                .collect()
        } else {
            let mut tx = self.pool.begin().await?;
            if !names.is_empty() {
                let (n, d): (Vec<&str>, Vec<&str>) =
                    names.iter().map(|(n, d)| (n.as_str(), d.as_str())).unzip();
                let hold: bool = sqlx::query_scalar(include_str!("modules/names_hold.sql"))
                    .bind(&n)
                    .bind(&d)
                    .fetch_one(&mut *tx)
                    .await?;
                if !hold {
                    return Ok(None);
                }
            }
            let (out, notices) = insert_jobs_tx(&mut tx, jobs, now).await?;
            tx.commit().await?;
            self.notify(notices);
            out
        };
        // Jobs that wait for a time, or must start before one, bring the next sweep forward.
        for (job, _) in out.iter().filter(|(_, created)| *created) {
            if job.state == JobState::Scheduled {
                self.sweep_by(job.run_at);
            }
            if let Some(deadline) = job.deadline_at {
                self.sweep_by(deadline);
            }
        }
        Ok(Some(out))
    }

    async fn job_output(&self, id: JobId) -> Result<Option<Vec<u8>>> {
        let out: Option<Option<Vec<u8>>> = sqlx::query_scalar(include_str!("jobs/output.sql"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(out.flatten())
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        let row: Option<JobRow> = sqlx::query_as(include_str!("jobs/get.sql"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(JobRow::into_job).transpose()
    }

    async fn attempts(&self, id: JobId) -> Result<Vec<Attempt>> {
        let row: Option<(String, String, i64, Option<String>, Option<i64>)> =
            sqlx::query_as(include_str!("jobs/attempts.sql"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let Some((ended, state, attempts, worker, started)) = row else {
            return Ok(Vec::new());
        };
        attempts_of(id, &ended, &state, attempts, worker, started)
    }

    async fn list_jobs(&self, f: &JobFilter) -> Result<Vec<Job>> {
        // No index of `jobs` reads the state: jobs that wait or run are found through the
        // queue and the claims, newest first; finished ones by walking `jobs` from the newest,
        // keeping those in the state asked for.
        let sql = match f.state {
            Some(JobState::Queued | JobState::Scheduled) => include_str!("jobs/list_waiting.sql"),
            Some(JobState::Running) => include_str!("jobs/list_running.sql"),
            _ => include_str!("jobs/list.sql"),
        };
        let rows: Vec<JobRow> = sqlx::query_as(sql)
            .bind(f.state.map(JobState::as_str))
            .bind(f.module_digest.as_deref())
            .bind(f.cursor)
            .bind(i64::from(f.limit))
            .bind(f.queue.as_deref())
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(JobRow::into_job).collect()
    }

    async fn activity(&self, since: i64, seen_since: i64) -> Result<Activity> {
        let minutes: Vec<(i64, i64, i64, i64)> =
            sqlx::query_as(include_str!("jobs/activity_minutes.sql"))
                .bind(since)
                .fetch_all(&self.pool)
                .await?;
        let nodes: Vec<(String, i64, i64, i64)> =
            sqlx::query_as(include_str!("jobs/activity_nodes.sql"))
                .bind(seen_since)
                .fetch_all(&self.pool)
                .await?;
        Ok(crate::store::rows::activity(minutes, nodes))
    }

    async fn count_unfinished(&self) -> Result<[(JobState, u64); 3]> {
        let row = sqlx::query_as(include_str!("jobs/count_unfinished.sql"))
            .fetch_one(&self.pool)
            .await?;
        Ok(crate::store::rows::unfinished_counts(row))
    }

    async fn count_by_state(&self) -> Result<Vec<(JobState, u64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(include_str!("jobs/count_by_state.sql"))
            .fetch_all(&self.pool)
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
        let history: Option<String> = sqlx::query_scalar(include_str!("jobs/history.sql"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let rows: Vec<EventRow> = sqlx::query_as(include_str!("jobs/events.sql"))
            .bind(id)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let others = rows
            .into_iter()
            .map(EventRow::into_event)
            .collect::<Result<Vec<_>>>()?;
        let state = history::parse(id, history.as_deref().unwrap_or_default(), after)?;
        Ok(history::merge(state, others, limit as usize))
    }

    async fn cancel(&self, id: JobId, now: i64) -> Result<JobState> {
        let mut tx = self.pool.begin().await?;
        // The queue row before the job's row, as every statement takes them: a queued or
        // scheduled job leaves the queue here. (A claim holding the row commits first, and
        // then the job is running.)
        sqlx::query(include_str!("jobs/unqueue.sql"))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let job = fetch_job(&mut tx, id).await?.ok_or(StoreError::NotFound {
            what: "job",
            id: id.to_string(),
        })?;
        let now = transition_at(&job, now);
        let mut freed = false;
        let state = match job.state {
            JobState::Scheduled | JobState::Queued => {
                let e = NewEvent::state(JobState::Cancelled, json!({}));
                sqlx::query(include_str!("jobs/cancel_waiting.sql"))
                    .bind(now)
                    .bind(history::tail(&e))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                // Its wait for a place of its key ends, or the place it held goes on.
                if let Some(c) = &job.concurrency {
                    freed = keys::ended_waiting(&mut tx, id, &c.key, self).await?;
                }
                JobState::Cancelled
            }
            JobState::Running if !job.cancel_requested => {
                sqlx::query(include_str!("jobs/request_cancel.sql"))
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                let e = NewEvent {
                    kind: "cancel_requested",
                    data: json!({ "attempt": job.attempts }),
                };
                push_events(&mut tx, id, &[e], now).await?;
                JobState::Running
            }
            JobState::Running | JobState::Cancelled => job.state,
            done @ (JobState::Succeeded | JobState::Failed) => {
                return Err(StoreError::Conflict(format!(
                    "job {id} already finished: it is {done}"
                )));
            }
        };
        tx.commit().await?;
        if state == JobState::Cancelled && job.state != JobState::Cancelled {
            crate::telemetry::job_ended_waiting(id, state, "cancelled while waiting");
            self.notify([Notice::Events(id), Notice::Ended(id)]);
            if freed {
                self.notify([Notice::JobsAvailable]);
            }
        } else {
            self.notify([Notice::Events(id)]);
        }
        Ok(state)
    }

    async fn retry(&self, id: JobId, now: i64) -> Result<JobState> {
        let mut tx = self.pool.begin().await?;
        let Retried {
            settings,
            concurrency,
            at: now,
        } = retried(id, fetch_job(&mut tx, id).await?, now)?;
        let e = NewEvent::state(JobState::Queued, json!({ "retried": true }));
        // Back in the queue, a job of a concurrency key takes a place again, or waits.
        let waits = keys::waits(&mut tx, concurrency.as_ref()).await?;
        sqlx::query(include_str!("jobs/retry.sql"))
            .bind(&settings.key[..])
            .bind(now)
            .bind(history::tail(&e))
            .bind(id)
            .bind(&settings.limits)
            .bind(&settings.retry)
            .bind(&settings.grants)
            .bind(waits)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if waits {
            self.notify([Notice::Events(id)]);
        } else {
            self.notify([Notice::Events(id), Notice::JobsAvailable]);
        }
        Ok(JobState::Queued)
    }

    async fn prune(&self, before: i64) -> Result<u64> {
        // No index of `jobs` reads `finished_at`, so the jobs are walked in id order, oldest
        // first, a page at a time. A job created at or after `before` cannot have finished
        // before it, so the walk stops at the first page that reaches one; what it reads
        // beyond the pruned jobs is the old jobs that stay (still running or waiting, or read
        // by a job that waits for their output), and one page.
        const PAGE: i64 = 1000;
        let mut cursor = 0i64;
        let mut pruned = 0u64;
        // The settings of the jobs walked past that stay.
        let mut kept: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
        loop {
            let page: Vec<(i64, i64, bool, Vec<u8>)> =
                sqlx::query_as(include_str!("jobs/prune_page.sql"))
                    .bind(before)
                    .bind(cursor)
                    .bind(PAGE)
                    .fetch_all(&self.pool)
                    .await?;
            let Some(&(last, last_created, _, _)) = page.last() else {
                break;
            };
            let full = page.len() as i64 == PAGE;
            let doomed: Vec<i64> = page.iter().filter(|p| p.2).map(|p| p.0).collect();
            let mut gone: std::collections::HashSet<i64> = std::collections::HashSet::new();
            if !doomed.is_empty() {
                let ids: Vec<i64> = sqlx::query_scalar(include_str!("jobs/prune_delete.sql"))
                    .bind(before)
                    .bind(&doomed)
                    .fetch_all(&self.pool)
                    .await?;
                pruned += ids.len() as u64;
                gone.extend(ids);
            }
            kept.extend(
                page.into_iter()
                    .filter(|p| !gone.contains(&p.0))
                    .map(|p| p.3),
            );
            if last_created >= before || !full {
                break;
            }
            cursor = last;
        }
        // Then the settings no job refers to, unused since well before `before`: a submission
        // touches the settings it relies on (`touch_settings`), so a job that refers to one of
        // these was created long before `before` and was walked past above.
        let kept: Vec<Vec<u8>> = kept.into_iter().collect();
        sqlx::query(include_str!("jobs/prune_settings.sql"))
            .bind(before.saturating_sub(SETTINGS_GRACE_MS))
            .bind(&kept)
            .execute(&self.pool)
            .await?;
        sqlx::query(include_str!("jobs/prune_runs.sql"))
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(pruned)
    }
}

/// An insert given no module names to check can only store its jobs or fail: were it to
/// answer "names moved", something is wrong with the statement.
fn refused_without_names() -> StoreError {
    StoreError::Corrupt("an insert with no names to check was refused".into())
}

/// Appends events to a job's `events` under the job row's lock; seq continues without gaps.
pub(super) async fn push_events(
    tx: &mut Tx<'_>,
    job_id: JobId,
    events: &[NewEvent],
    now: i64,
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
    let data: Vec<String> = events.iter().map(|e| e.data.to_string()).collect();
    sqlx::query(include_str!("jobs/push_events.sql"))
        .bind(job_id)
        .bind(now)
        .bind(&kinds)
        .bind(&data)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The settings (limits, retry policy, grants) and first events of a batch of jobs, each made
/// once for a run of jobs that have the same (jobs submitted together usually do), and each
/// job's index into them.
#[derive(Default)]
struct Texts {
    /// The batch's settings, each once.
    settings: Vec<Settings>,
    events: Vec<String>,
    /// Per job: its settings and its first event.
    of: Vec<(usize, usize)>,
}

impl Texts {
    fn of(jobs: &[(NewJob, JobState, i64)], now: i64) -> Texts {
        let mut t = Texts::default();
        for (k, (j, state, run_at)) in jobs.iter().enumerate() {
            let previous = k.checked_sub(1).map(|p| (&jobs[p], t.of[p]));
            let settings = match previous {
                Some(((p, _, _), (settings, _)))
                    if p.limits == j.limits && p.retry == j.retry && p.grants == j.grants =>
                {
                    settings
                }
                _ => {
                    let new = Settings::of(j);
                    match t.settings.iter().position(|p| p.key == new.key) {
                        Some(known) => known,
                        None => {
                            t.settings.push(new);
                            t.settings.len() - 1
                        }
                    }
                }
            };
            let event = match previous {
                Some(((_, p_state, p_run_at), (_, event)))
                    if p_state == state && p_run_at == run_at =>
                {
                    event
                }
                _ => {
                    t.events
                        .push(history::line(1, now, &created_event(*state, *run_at)));
                    t.events.len() - 1
                }
            };
            t.of.push((settings, event));
        }
        t
    }

    fn keys(&self) -> Vec<Vec<u8>> {
        self.settings.iter().map(|p| p.key.to_vec()).collect()
    }
}

/// Inserts keyless jobs (each with its first event in its row, its settings by key: `texts`,
/// which the caller touched first with [`touch_settings`]) and their queue rows and stores the
/// settings not stored yet, with one statement (one round trip, whatever the batch's size), if
/// every module name of `names` still points at its digest (else nothing, and `None`); ids are
/// drawn from the sequence in the same statement and come back in the batch's order. (A new
/// job is always queued or scheduled.)
///
/// One statement outside a transaction is one transaction: on the pool this is a whole
/// submission group, committed (and flushed) before it returns.
async fn insert_keyless<'c, E>(
    exec: E,
    jobs: &[(NewJob, JobState, i64)],
    texts: &Texts,
    names: &[(String, String)],
    now: i64,
) -> Result<Option<(Vec<i64>, Vec<bool>)>>
where
    E: Executor<'c, Database = Postgres>,
{
    let n = jobs.len();
    let (mut module, mut state, mut priority, mut run_at) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut input, mut settings, mut deadline_at) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut workflow_ref, mut input_from, mut event, mut queue) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut concurrency_key, mut concurrency_limit) =
        (Vec::with_capacity(n), Vec::with_capacity(n));
    for ((j, s, at), &(k, e)) in jobs.iter().zip(&texts.of) {
        module.push(j.module_digest.as_str());
        state.push(s.as_str());
        priority.push(j.priority);
        run_at.push(*at);
        input.push(j.input.as_slice());
        settings.push(&texts.settings[k].key[..]);
        deadline_at.push(j.deadline_at);
        workflow_ref.push(j.workflow_ref.as_deref());
        input_from.push(j.input_from);
        event.push(texts.events[e].as_str());
        queue.push(j.queue.as_str());
        concurrency_key.push(j.concurrency.as_ref().map(|c| c.key.as_str()));
        concurrency_limit.push(j.concurrency.as_ref().map(|c| i64::from(c.limit)));
    }
    let (name, digest): (Vec<&str>, Vec<&str>) =
        names.iter().map(|(n, d)| (n.as_str(), d.as_str())).unzip();
    let key: Vec<&[u8]> = texts.settings.iter().map(|p| &p.key[..]).collect();
    let limits: Vec<&str> = texts.settings.iter().map(|p| p.limits.as_str()).collect();
    let retry: Vec<&str> = texts.settings.iter().map(|p| p.retry.as_str()).collect();
    let grants: Vec<&str> = texts.settings.iter().map(|p| p.grants.as_str()).collect();
    let rows: Vec<(i64, bool)> = sqlx::query_as(include_str!("jobs/insert_keyless.sql"))
        .bind(&module)
        .bind(&state)
        .bind(&priority)
        .bind(&run_at)
        .bind(&input)
        .bind(&settings)
        .bind(&deadline_at)
        .bind(&workflow_ref)
        .bind(&input_from)
        .bind(&event)
        .bind(now)
        .bind(&name)
        .bind(&digest)
        .bind(&key)
        .bind(&limits)
        .bind(&retry)
        .bind(&grants)
        .bind(&queue)
        .bind(&concurrency_key)
        .bind(&concurrency_limit)
        .bind(jobs.iter().any(|(j, _, _)| j.concurrency.is_some()))
        .fetch_all(exec)
        .await?;
    if rows.is_empty() && !jobs.is_empty() && !names.is_empty() {
        return Ok(None);
    }
    if rows.len() != jobs.len() {
        return Err(StoreError::Corrupt(format!(
            "inserting {} jobs returned {} ids",
            jobs.len(),
            rows.len()
        )));
    }
    Ok(Some(rows.into_iter().unzip()))
}

/// Inserts jobs and their first events inside `tx`; returns them and the notices to send once
/// `tx` commits. Used by job submission and by the workflow engine's steps. A new job has no
/// followers yet (its id is not known before this commits), so its creation announces only
/// that jobs are available.
pub(super) async fn insert_jobs_tx(
    tx: &mut Tx<'_>,
    jobs: Vec<NewJob>,
    now: i64,
) -> Result<Inserted> {
    let mut out: Vec<Option<(Job, bool)>> = Vec::with_capacity(jobs.len());
    let mut any_queued = false;
    // Every concurrency key the jobs name is locked first, in one order (the statements
    // below lock their own again, which a transaction's locks allow).
    let keys: Vec<&str> = jobs.iter().filter_map(key_of).collect();
    keys::lock(tx, &keys).await?;
    // Jobs with an idempotency key one at a time (a key may repeat, even within the batch);
    // the others with one statement.
    let mut keyless: Vec<(usize, NewJob, JobState, i64)> = Vec::new();
    for j in jobs {
        let (state, run_at) = initial_state(&j, now);
        let Some(key) = j.idempotency_key.clone() else {
            keyless.push((out.len(), j, state, run_at));
            out.push(None);
            continue;
        };
        let existing: Option<i64> = sqlx::query_scalar(include_str!("jobs/by_idempotency_key.sql"))
            .bind(&key)
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(id) = existing {
            let job = fetch_job(tx, id)
                .await?
                .ok_or_else(|| StoreError::Corrupt("job vanished".into()))?;
            out.push(Some((job, false)));
            continue;
        }
        let settings = Settings::of(&j);
        touch_settings(&mut **tx, &[settings.key.to_vec()], now).await?;
        let (id, waits): (i64, bool) = sqlx::query_as(include_str!("jobs/insert_keyed.sql"))
            .bind(&j.module_digest)
            .bind(state.as_str())
            .bind(j.priority)
            .bind(run_at)
            .bind(&j.input)
            .bind(&settings.key[..])
            .bind(&settings.limits)
            .bind(&settings.retry)
            .bind(&settings.grants)
            .bind(&key)
            .bind(j.deadline_at)
            .bind(j.workflow_ref.as_deref())
            .bind(now)
            .bind(j.input_from)
            .bind(history::line(1, now, &created_event(state, run_at)))
            .bind(&j.queue)
            .bind(j.concurrency.as_ref().map(|c| c.key.as_str()))
            .bind(j.concurrency.as_ref().map(|c| i64::from(c.limit)))
            .fetch_one(&mut **tx)
            .await?;
        any_queued |= state == JobState::Queued && !waits;
        let mut job = Job::inserted(id, j, state, run_at, now);
        job.waiting_for_key = waits;
        out.push(Some((job, true)));
    }
    if !keyless.is_empty() {
        let (slots, batch): (Vec<usize>, Vec<(NewJob, JobState, i64)>) = keyless
            .into_iter()
            .map(|(slot, j, state, run_at)| (slot, (j, state, run_at)))
            .unzip();
        // In a transaction the store's record of touched settings cannot be trusted (it may
        // roll back): touch every time (a lookup by key, a write at most every few minutes).
        let texts = Texts::of(&batch, now);
        touch_settings(&mut **tx, &texts.keys(), now).await?;
        let (ids, waits) = insert_keyless(&mut **tx, &batch, &texts, &[], now)
            .await?
            .ok_or_else(refused_without_names)?;
        for (((id, slot), (j, state, run_at)), waits) in
            ids.into_iter().zip(slots).zip(batch).zip(waits)
        {
            any_queued |= state == JobState::Queued && !waits;
            let mut job = Job::inserted(id, j, state, run_at, now);
            job.waiting_for_key = waits;
            out[slot] = Some((job, true));
        }
    }
    let result = out
        .into_iter()
        .map(|entry| entry.ok_or_else(|| StoreError::Corrupt("a submitted job got no row".into())))
        .collect::<Result<Vec<_>>>()?;
    let notices = if any_queued {
        vec![Notice::JobsAvailable]
    } else {
        Vec::new()
    };
    Ok((result, notices))
}

/// A job's concurrency key, if it has one.
fn key_of(job: &NewJob) -> Option<&str> {
    job.concurrency.as_ref().map(|c| c.key.as_str())
}

/// Job `id`, its row locked for the rest of `tx`.
pub(super) async fn fetch_job(tx: &mut Tx<'_>, id: JobId) -> Result<Option<Job>> {
    let row: Option<JobRow> = sqlx::query_as(include_str!("jobs/get_for_update.sql"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(JobRow::into_job).transpose()
}
