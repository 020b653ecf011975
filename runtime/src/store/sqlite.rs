//! The SQLite backend: the embedded default. WAL mode; one writer connection (SQLite allows one
//! writer at a time, so writes queue in-process instead of spinning on SQLITE_BUSY) and a pool
//! of readers. Claims are one atomic `UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING`.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Sqlite, SqlitePool, Transaction};
use tokio::sync::broadcast;

use super::model::*;
use super::rows::*;
use super::{Notice, Result, Store, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    notices: broadcast::Sender<Notice>,
    /// The background checkpointer runs while this lives.
    _checkpointer: std::sync::Arc<()>,
}

type Tx<'a> = Transaction<'a, Sqlite>;

const DEADLINE_PASSED: &str = "the job's deadline passed before it could run";

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path` and applies migrations.
    pub async fn open(path: &str) -> Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
            .map_err(|e| StoreError::BadUrl {
                url: path.to_string(),
                reason: e.to_string(),
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL survives a process crash (kill -9); FULL adds power-loss safety.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // The writer never checkpoints: copying the WAL into the database (and syncing it)
        // inside a commit stalls every write queued behind it for tens of milliseconds. A
        // connection of its own does it in the background instead (`checkpointer`).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
            .await?;
        MIGRATOR.run(&writer).await?;
        let checkpoint = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let alive = std::sync::Arc::new(());
        tokio::spawn(checkpointer(checkpoint, std::sync::Arc::downgrade(&alive)));
        let reader = SqlitePoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .connect_with(options.read_only(true))
            .await?;
        let (notices, _) = broadcast::channel(4096);
        Ok(SqliteStore {
            writer,
            reader,
            notices,
            _checkpointer: alive,
        })
    }

    fn notify(&self, notices: impl IntoIterator<Item = Notice>) {
        for n in notices {
            let _ = self.notices.send(n);
        }
    }

    async fn announce(&self, notices: Vec<Notice>) {
        self.notify(notices);
    }
}

workflow_store!(
    SqliteStore,
    Sqlite,
    sql: super::workflow_sql::sqlite_placeholders,
    insert_jobs: insert_jobs_tx,
    writer: writer,
    reader: reader
);

/// Copies the WAL into the database every 200 ms without blocking writers or readers
/// (`PASSIVE`); ends when the store is dropped.
async fn checkpointer(pool: SqlitePool, store: std::sync::Weak<()>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if store.upgrade().is_none() {
            pool.close().await;
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::warn!("WAL checkpoint failed: {e}");
        }
    }
}

/// Appends events to a job's history under the job row's lock; seq continues without gaps.
async fn push_events(tx: &mut Tx<'_>, job_id: JobId, events: &[NewEvent], now: i64) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let n = events.len() as i64;
    let last: i64 = sqlx::query_scalar(
        "UPDATE jobs SET event_seq = event_seq + ? WHERE id = ? RETURNING event_seq",
    )
    .bind(n)
    .bind(job_id)
    .fetch_one(&mut **tx)
    .await?;
    for (i, e) in events.iter().enumerate() {
        sqlx::query("INSERT INTO events (job_id, seq, kind, data, at) VALUES (?, ?, ?, ?, ?)")
            .bind(job_id)
            .bind(last - n + 1 + i as i64)
            .bind(e.kind)
            .bind(e.data.to_string())
            .bind(now)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Writes event rows with multi-row INSERTs (one statement per 500 rows).
async fn write_events(tx: &mut Tx<'_>, rows: &[PendingEvent], now: i64) -> Result<()> {
    for chunk in rows.chunks(500) {
        let mut q = sqlx::QueryBuilder::<Sqlite>::new("");
        push_events_insert(&mut q, chunk, now);
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Inserts jobs and their first events inside `tx`; returns them and the notices to send once
/// `tx` commits. Used by job submission and by the workflow engine's steps.
async fn insert_jobs_tx(
    tx: &mut Tx<'_>,
    jobs: Vec<NewJob>,
    now: i64,
) -> Result<(Vec<(Job, bool)>, Vec<Notice>)> {
    let mut out = Vec::with_capacity(jobs.len());
    let mut notices = Vec::new();
    let mut any_queued = false;
    let mut events = Vec::new();
    for j in jobs {
        if let Some(key) = &j.idempotency_key {
            let existing: Option<i64> =
                sqlx::query_scalar("SELECT id FROM jobs WHERE idempotency_key = ?")
                    .bind(key)
                    .fetch_optional(&mut **tx)
                    .await?;
            if let Some(id) = existing {
                let job = fetch_job(tx, id)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt("job vanished".into()))?;
                out.push((job, false));
                continue;
            }
        }
        let run_at = j.run_at.unwrap_or(now);
        let state = if run_at > now {
            JobState::Scheduled
        } else {
            JobState::Queued
        };
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (module_digest, state, priority, run_at, input, limits, retry, grants,
                               idempotency_key, deadline_at, workflow_ref, input_from, created_at, updated_at,
                               event_seq)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) RETURNING id",
        )
        .bind(&j.module_digest)
        .bind(state.as_str())
        .bind(j.priority)
        .bind(run_at)
        .bind(&j.input)
        .bind(json(&j.limits))
        .bind(json(&j.retry))
        .bind(json(&j.grants))
        .bind(j.idempotency_key.as_deref())
        .bind(j.deadline_at)
        .bind(j.workflow_ref.as_deref())
        .bind(j.input_from)
        .bind(now)
        .bind(now)
        .fetch_one(&mut **tx)
        .await?;
        let extra = if state == JobState::Scheduled {
            json!({ "run_at": run_at })
        } else {
            json!({})
        };
        events.extend(pending(id, 1, &[NewEvent::state(state, extra)]));
        any_queued |= state == JobState::Queued;
        notices.push(Notice::Events(id));
        out.push((Job::inserted(id, j, state, run_at, now), true));
    }
    write_events(tx, &events, now).await?;
    if any_queued {
        notices.push(Notice::JobsAvailable);
    }
    Ok((out, notices))
}

async fn fetch_job(tx: &mut Tx<'_>, id: JobId) -> Result<Option<Job>> {
    let row: Option<JobRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"
    )))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(JobRow::into_job).transpose()
}

/// Applies the end of an attempt: `fence` is the worker that must still hold it (`None` for the
/// rescuer, which acts on expired leases).
async fn apply_completion(
    events_out: &mut Vec<PendingEvent>,
    tx: &mut Tx<'_>,
    c: &Completion,
    fence: Option<&str>,
    now: i64,
) -> Result<Completed> {
    #[derive(sqlx::FromRow)]
    struct Snap {
        attempts: i64,
        retry: String,
        cancel_requested: bool,
        deadline_at: Option<i64>,
    }
    let snap: Option<Snap> = sqlx::query_as(
        "SELECT attempts, retry, cancel_requested, deadline_at FROM jobs
         WHERE id = ? AND state = 'running' AND attempts = ? AND (? IS NULL OR worker = ?)",
    )
    .bind(c.job_id)
    .bind(i64::from(c.attempt))
    .bind(fence)
    .bind(fence)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(snap) = snap else {
        return Ok(Completed::Refused);
    };
    let Ending {
        state,
        run_at,
        finished_at,
        keep_output,
        events,
    } = ending(
        EndingSnapshot {
            attempts: snap.attempts,
            retry: &snap.retry,
            cancel_requested: snap.cancel_requested,
            deadline_at: snap.deadline_at,
        },
        c,
        now,
    )?;
    // Both updates in one command (see `push_events_insert`); only the first returns a row.
    let seqs: Vec<i64> = sqlx::query_scalar(
        "UPDATE jobs SET state = ?, outcome = ?, error = ?, output = ?, worker = NULL, lease_until = NULL,
                run_at = COALESCE(?, run_at), finished_at = ?, updated_at = ?, event_seq = event_seq + ?
         WHERE id = ? RETURNING event_seq;
         UPDATE attempts SET outcome = ?, trap = ?, error = ?, fuel_consumed = ?, peak_memory_bytes = ?,
                wall_time_us = ?, finished_at = ?
         WHERE job_id = ? AND attempt = ?",
    )
    .bind(state.as_str())
    .bind(c.outcome.as_str())
    .bind(c.error.as_deref())
    .bind(keep_output.then_some(c.output.as_slice()))
    .bind(run_at)
    .bind(finished_at)
    .bind(now)
    .bind(events.len() as i64)
    .bind(c.job_id)
    .bind(c.outcome.as_str())
    .bind(c.trap.as_deref())
    .bind(c.error.as_deref())
    .bind(i64::try_from(c.fuel_consumed).unwrap_or(i64::MAX))
    .bind(i64::try_from(c.peak_memory_bytes).unwrap_or(i64::MAX))
    .bind(i64::try_from(c.wall_time_us).unwrap_or(i64::MAX))
    .bind(now)
    .bind(c.job_id)
    .bind(i64::from(c.attempt))
    .fetch_all(&mut **tx)
    .await?;
    let Some(&last_seq) = seqs.first() else {
        return Err(StoreError::Corrupt(format!(
            "job {} vanished while completing it",
            c.job_id
        )));
    };
    events_out.extend(pending(c.job_id, last_seq, &events));
    Ok(Completed::Applied(state))
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    async fn put_module(&self, m: NewModule, now: i64) -> Result<(ModuleRecord, bool)> {
        let mut tx = self.writer.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO modules (digest, size, world, imports, bytes, created_at) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(&m.digest)
        .bind(m.bytes.len() as i64)
        .bind(&m.world)
        .bind(json(&m.imports))
        .bind(&m.bytes)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if let Some(name) = &m.name {
            sqlx::query(
                "INSERT INTO module_names (name, digest, updated_at) VALUES (?, ?, ?)
                 ON CONFLICT (name) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
            )
            .bind(name)
            .bind(&m.digest)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let record = self.get_module(&m.digest).await?.ok_or_else(|| {
            StoreError::Corrupt(format!("module {} vanished after insert", m.digest))
        })?;
        Ok((record, inserted))
    }

    async fn get_module(&self, key: &str) -> Result<Option<ModuleRecord>> {
        let row: Option<ModuleRow> = sqlx::query_as(
            "SELECT m.digest, m.size, m.world, m.imports, m.created_at,
                    (SELECT group_concat(n.name, char(10)) FROM module_names n WHERE n.digest = m.digest) AS names
             FROM modules m
             WHERE m.digest = ? OR m.digest = (SELECT digest FROM module_names WHERE name = ?)",
        )
        .bind(key)
        .bind(key)
        .fetch_optional(&self.reader)
        .await?;
        row.map(ModuleRow::into_record).transpose()
    }

    async fn module_bytes(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT bytes FROM modules WHERE digest = ?")
                .bind(digest)
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    async fn list_modules(&self) -> Result<Vec<ModuleRecord>> {
        let rows: Vec<ModuleRow> = sqlx::query_as(
            "SELECT m.digest, m.size, m.world, m.imports, m.created_at,
                    (SELECT group_concat(n.name, char(10)) FROM module_names n WHERE n.digest = m.digest) AS names
             FROM modules m ORDER BY m.created_at, m.digest",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter().map(ModuleRow::into_record).collect()
    }

    async fn insert_jobs(&self, jobs: Vec<NewJob>, now: i64) -> Result<Vec<(Job, bool)>> {
        let mut tx = self.writer.begin().await?;
        let (out, notices) = insert_jobs_tx(&mut tx, jobs, now).await?;
        tx.commit().await?;
        self.notify(notices);
        Ok(out)
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        let row: Option<JobRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.map(JobRow::into_job).transpose()
    }

    async fn attempts(&self, id: JobId) -> Result<Vec<Attempt>> {
        let rows: Vec<AttemptRow> = sqlx::query_as(
            "SELECT attempt, worker, outcome, trap, error, fuel_consumed, peak_memory_bytes, wall_time_us,
                    started_at, finished_at
             FROM attempts WHERE job_id = ? ORDER BY attempt",
        )
        .bind(id)
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter().map(AttemptRow::into_attempt).collect()
    }

    async fn list_jobs(&self, f: &JobFilter) -> Result<Vec<Job>> {
        let rows: Vec<JobRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE (? IS NULL OR state = ?) AND (? IS NULL OR module_digest = ?) AND (? IS NULL OR id < ?)
             ORDER BY id DESC LIMIT ?"
        )))
        .bind(f.state.map(JobState::as_str))
        .bind(f.state.map(JobState::as_str))
        .bind(f.module_digest.as_deref())
        .bind(f.module_digest.as_deref())
        .bind(f.cursor)
        .bind(f.cursor)
        .bind(i64::from(f.limit))
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter().map(JobRow::into_job).collect()
    }

    async fn count_by_state(&self) -> Result<Vec<(JobState, u64)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM jobs GROUP BY state")
                .fetch_all(&self.reader)
                .await?;
        rows.into_iter()
            .map(|(s, n)| {
                let state = s.parse().map_err(|e: String| StoreError::Corrupt(e))?;
                Ok((state, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }

    async fn events(&self, id: JobId, after: i64, limit: u32) -> Result<Vec<Event>> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT job_id, seq, kind, data, at FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter().map(EventRow::into_event).collect()
    }

    async fn claim(
        &self,
        worker: &str,
        limit: u32,
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<Claimed>> {
        let mut tx = self.writer.begin().await?;
        let mut notices = Vec::new();
        // Jobs past their overall deadline never start, and scheduled jobs whose time came are
        // queued: both sweeps in one command (see `push_events_insert`), each naming its partial
        // index so that a deep queue is never scanned.
        let swept: Vec<(i64, String)> = sqlx::query_as(
            "UPDATE jobs INDEXED BY jobs_deadline SET state = 'failed', error = ?, finished_at = ?, updated_at = ?
             WHERE state IN ('queued', 'scheduled') AND deadline_at IS NOT NULL AND deadline_at <= ?
             RETURNING id, state;
             UPDATE jobs INDEXED BY jobs_scheduled SET state = 'queued', updated_at = ?
             WHERE state = 'scheduled' AND run_at <= ? RETURNING id, state",
        )
        .bind(DEADLINE_PASSED)
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for (id, state) in swept {
            let failed = state == JobState::Failed.as_str();
            let e = if failed {
                NewEvent::state(JobState::Failed, json!({ "error": DEADLINE_PASSED }))
            } else {
                NewEvent::state(JobState::Queued, json!({}))
            };
            push_events(&mut tx, id, &[e], now).await?;
            notices.push(Notice::Events(id));
            if failed {
                notices.push(Notice::Ended(id));
            }
        }
        let rows: Vec<ClaimRow> = sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE jobs SET state = 'running', worker = ?, lease_until = ?, attempts = attempts + 1, updated_at = ?,
                    event_seq = event_seq + 1
             WHERE id IN (SELECT id FROM jobs INDEXED BY jobs_queued WHERE state = 'queued' ORDER BY priority DESC, run_at, id LIMIT ?)
             RETURNING {JOB_COLUMNS}, {UPSTREAM_OUTPUT}"
        )))
        .bind(worker)
        .bind(now + lease_ms)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let mut rows = rows;
        rows.sort_by_key(ClaimRow::claim_order);
        let mut claimed = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let seq = row.event_seq();
            let c = row.into_claimed()?;
            let e = NewEvent::state(
                JobState::Running,
                json!({ "attempt": c.attempt, "worker": worker }),
            );
            events.extend(pending(c.id, seq, &[e]));
            notices.push(Notice::Events(c.id));
            claimed.push(c);
        }
        // One claimed job, one state event: the attempts and their events go in one command.
        for (chunk, evs) in claimed.chunks(500).zip(events.chunks(500)) {
            let mut q = sqlx::QueryBuilder::<Sqlite>::new(
                "INSERT INTO attempts (job_id, attempt, worker, started_at) ",
            );
            q.push_values(chunk, |mut b, c| {
                b.push_bind(c.id)
                    .push_bind(i64::from(c.attempt))
                    .push_bind(worker)
                    .push_bind(now);
            });
            q.push("; ");
            push_events_insert(&mut q, evs, now);
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.notify(notices);
        Ok(claimed)
    }

    async fn append_events(
        &self,
        id: JobId,
        worker: &str,
        attempt: u32,
        events: &[NewEvent],
        now: i64,
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let holds: Option<i64> =
            sqlx::query_scalar("SELECT id FROM jobs WHERE id = ? AND state = 'running' AND worker = ? AND attempts = ?")
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

    async fn complete(&self, completions: Vec<Completion>, now: i64) -> Result<Vec<Completed>> {
        let mut tx = self.writer.begin().await?;
        let mut results = Vec::with_capacity(completions.len());
        let mut notices = Vec::new();
        let mut events = Vec::new();
        // Rows are locked in id order, as the heartbeat locks them: no deadlocks between them.
        let mut order: Vec<usize> = (0..completions.len()).collect();
        order.sort_by_key(|&i| completions[i].job_id);
        let mut applied = vec![Completed::Refused; completions.len()];
        for i in order {
            let c = &completions[i];
            let r = apply_completion(&mut events, &mut tx, c, Some(&c.worker), now).await?;
            if let Completed::Applied(state) = r {
                notices.push(Notice::Events(c.job_id));
                if state.is_final() {
                    notices.push(Notice::Ended(c.job_id));
                }
                if state == JobState::Scheduled {
                    notices.push(Notice::JobsAvailable);
                }
            }
            applied[i] = r;
        }
        results.extend(applied);
        write_events(&mut tx, &events, now).await?;
        tx.commit().await?;
        self.notify(notices);
        Ok(results)
    }

    async fn heartbeat(&self, worker: &str, now: i64, lease_ms: i64) -> Result<Vec<(JobId, bool)>> {
        let rows: Vec<(i64, bool)> = sqlx::query_as(
            "UPDATE jobs SET lease_until = ? WHERE state = 'running' AND worker = ? RETURNING id, cancel_requested",
        )
        .bind(now + lease_ms)
        .bind(worker)
        .fetch_all(&self.writer)
        .await?;
        Ok(rows)
    }

    async fn rescue_expired(&self, now: i64) -> Result<Vec<JobId>> {
        let mut tx = self.writer.begin().await?;
        let expired: Vec<(i64, i64, Option<String>)> = sqlx::query_as(
            "SELECT id, attempts, worker FROM jobs WHERE state = 'running' AND lease_until < ?",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut rescued = Vec::new();
        let mut events = Vec::new();
        for (id, attempts, worker) in expired {
            let c = Completion::lost(id, attempts, worker);
            if let Completed::Applied(_) =
                apply_completion(&mut events, &mut tx, &c, None, now).await?
            {
                rescued.push(id);
            }
        }
        write_events(&mut tx, &events, now).await?;
        tx.commit().await?;
        // A rescued job may have ended (failed, no attempts left): followers of ends look.
        let mut notices: Vec<Notice> = rescued
            .iter()
            .flat_map(|id| [Notice::Events(*id), Notice::Ended(*id)])
            .collect();
        notices.push(Notice::JobsAvailable);
        self.notify(notices);
        Ok(rescued)
    }

    async fn next_scheduled_at(&self) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT MIN(run_at) FROM jobs WHERE state = 'scheduled'")
                .fetch_one(&self.reader)
                .await?,
        )
    }

    async fn cancel(&self, id: JobId, now: i64) -> Result<JobState> {
        let mut tx = self.writer.begin().await?;
        let job = fetch_job(&mut tx, id).await?.ok_or(StoreError::NotFound {
            what: "job",
            id: id.to_string(),
        })?;
        let state = match job.state {
            JobState::Scheduled | JobState::Queued => {
                sqlx::query(
                    "UPDATE jobs SET state = 'cancelled', outcome = NULL, finished_at = ?, updated_at = ? WHERE id = ?",
                )
                .bind(now)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                push_events(
                    &mut tx,
                    id,
                    &[NewEvent::state(JobState::Cancelled, json!({}))],
                    now,
                )
                .await?;
                JobState::Cancelled
            }
            JobState::Running if !job.cancel_requested => {
                sqlx::query("UPDATE jobs SET cancel_requested = TRUE, updated_at = ? WHERE id = ?")
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
            self.notify([Notice::Events(id), Notice::Ended(id)]);
        } else {
            self.notify([Notice::Events(id)]);
        }
        Ok(state)
    }

    async fn retry(&self, id: JobId, now: i64) -> Result<JobState> {
        let mut tx = self.writer.begin().await?;
        let job = fetch_job(&mut tx, id).await?.ok_or(StoreError::NotFound {
            what: "job",
            id: id.to_string(),
        })?;
        if !matches!(job.state, JobState::Failed | JobState::Cancelled) {
            return Err(StoreError::Conflict(format!(
                "job {id} is {}: only failed or cancelled jobs can be retried",
                job.state
            )));
        }
        let mut retry = job.retry.clone();
        retry.max_attempts = job.attempts.saturating_add(job.retry.max_attempts.max(1));
        sqlx::query(
            "UPDATE jobs SET state = 'queued', retry = ?, run_at = ?, cancel_requested = FALSE, outcome = NULL,
                    error = NULL, output = NULL, finished_at = NULL, deadline_at = NULL, updated_at = ?
             WHERE id = ?",
        )
        .bind(json(&retry))
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        push_events(
            &mut tx,
            id,
            &[NewEvent::state(
                JobState::Queued,
                json!({ "retried": true }),
            )],
            now,
        )
        .await?;
        tx.commit().await?;
        self.notify([Notice::Events(id), Notice::JobsAvailable]);
        Ok(JobState::Queued)
    }

    async fn prune(&self, before: i64) -> Result<u64> {
        let mut tx = self.writer.begin().await?;
        let cond = format!("SELECT id FROM jobs WHERE {}", super::rows::prunable("?"));
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM events WHERE job_id IN ({cond})"
        )))
        .bind(before)
        .execute(&mut *tx)
        .await?;
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM attempts WHERE job_id IN ({cond})"
        )))
        .bind(before)
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM jobs WHERE {}",
            super::rows::prunable("?")
        )))
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Finished workflow runs (their nodes, elements and events go with them).
        sqlx::query("DELETE FROM workflow_runs WHERE finished_at IS NOT NULL AND finished_at < ?")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn add_schedule(
        &self,
        name: Option<String>,
        cron: &str,
        target: Value,
        next_run_at: i64,
        now: i64,
    ) -> Result<Schedule> {
        let row: ScheduleRow = sqlx::query_as(
            "INSERT INTO schedules (name, cron, target, next_run_at, created_at) VALUES (?, ?, ?, ?, ?)
             RETURNING id, name, cron, target, next_run_at, created_at",
        )
        .bind(name.as_deref())
        .bind(cron)
        .bind(target.to_string())
        .bind(next_run_at)
        .bind(now)
        .fetch_one(&self.writer)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Conflict(format!("a schedule named {:?} already exists", name.as_deref().unwrap_or("")))
            }
            _ => StoreError::Database(e),
        })?;
        row.into_schedule()
    }

    async fn list_schedules(&self) -> Result<Vec<Schedule>> {
        let rows: Vec<ScheduleRow> = sqlx::query_as(
            "SELECT id, name, cron, target, next_run_at, created_at FROM schedules ORDER BY id",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter().map(ScheduleRow::into_schedule).collect()
    }

    async fn delete_schedule(&self, key: &str) -> Result<bool> {
        let id: Option<i64> = key.parse().ok();
        let n = sqlx::query("DELETE FROM schedules WHERE id = ? OR name = ?")
            .bind(id)
            .bind(key)
            .execute(&self.writer)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    async fn put_workflow(
        &self,
        name: &str,
        definition: &str,
        now: i64,
    ) -> Result<(WorkflowRecord, bool)> {
        let mut tx = self.writer.begin().await?;
        let latest: Option<WorkflowRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE name = ? ORDER BY version DESC LIMIT 1"
        )))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let (record, created) = next_workflow(latest, name, definition, now)?;
        if !created {
            return Ok((record, false));
        }
        sqlx::query(
            "INSERT INTO workflows (name, version, definition, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(name)
        .bind(record.version)
        .bind(definition)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((record, true))
    }

    async fn get_workflow(
        &self,
        name: &str,
        version: Option<i64>,
    ) -> Result<Option<WorkflowRecord>> {
        let row: Option<WorkflowRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE name = ? AND (? IS NULL OR version = ?)
             ORDER BY version DESC LIMIT 1"
        )))
        .bind(name)
        .bind(version)
        .bind(version)
        .fetch_optional(&self.reader)
        .await?;
        row.map(WorkflowRow::into_record).transpose()
    }

    async fn list_workflows(&self) -> Result<Vec<WorkflowRecord>> {
        let rows: Vec<WorkflowRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows w
             WHERE version = (SELECT MAX(version) FROM workflows WHERE name = w.name) ORDER BY name"
        )))
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter().map(WorkflowRow::into_record).collect()
    }

    async fn take_due_schedules(
        &self,
        now: i64,
        next: for<'c> fn(&'c str, i64) -> Option<i64>,
    ) -> Result<Vec<Schedule>> {
        let mut tx = self.writer.begin().await?;
        let rows: Vec<ScheduleRow> = sqlx::query_as(
            "SELECT id, name, cron, target, next_run_at, created_at FROM schedules WHERE next_run_at <= ?",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut due = Vec::new();
        for row in rows {
            let s = row.into_schedule()?;
            let following = next(&s.cron, now).unwrap_or(i64::MAX);
            sqlx::query("UPDATE schedules SET next_run_at = ? WHERE id = ?")
                .bind(following)
                .bind(s.id)
                .execute(&mut *tx)
                .await?;
            due.push(s);
        }
        tx.commit().await?;
        Ok(due)
    }
}
