//! The Postgres backend: for production and for many nodes sharing one database. Claims with
//! `FOR UPDATE SKIP LOCKED`, so workers on any number of nodes never wait on each other's rows;
//! changes are announced with NOTIFY and every node LISTENs, so idle workers wake and live event
//! streams move across nodes.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{AssertSqlSafe, Executor, PgPool, Postgres, Transaction};
use tokio::sync::broadcast;

use super::model::*;
use super::rows::*;
use super::{Notice, Result, Store, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PgStore {
    pool: PgPool,
    /// NOTIFY channel, one per schema so that installations sharing a database stay apart.
    channel: String,
    notices: broadcast::Sender<Notice>,
}

type Tx<'a> = Transaction<'a, Postgres>;

/// Columns of keyless jobs inserted with one `INSERT … SELECT FROM UNNEST`.
#[derive(Default)]
struct KeylessColumns {
    id: Vec<i64>,
    module: Vec<String>,
    state: Vec<&'static str>,
    priority: Vec<i64>,
    run_at: Vec<i64>,
    input: Vec<Vec<u8>>,
    limits: Vec<String>,
    retry: Vec<String>,
    grants: Vec<String>,
    deadline_at: Vec<Option<i64>>,
    workflow_ref: Vec<Option<String>>,
    input_from: Vec<Option<i64>>,
}

/// Columns of a batch of completions, applied with one `UPDATE … FROM UNNEST` per table.
#[derive(Default)]
struct CompletionColumns {
    id: Vec<i64>,
    state: Vec<&'static str>,
    outcome: Vec<&'static str>,
    error: Vec<Option<String>>,
    output: Vec<Option<Vec<u8>>>,
    run_at: Vec<Option<i64>>,
    finished_at: Vec<Option<i64>>,
    event_count: Vec<i64>,
    attempt: Vec<i64>,
    trap: Vec<Option<String>>,
    fuel: Vec<i64>,
    peak_memory: Vec<i64>,
    wall_time: Vec<i64>,
}

const DEADLINE_PASSED: &str = "the job's deadline passed before it could run";

impl PgStore {
    pub async fn connect(url: &str) -> Result<PgStore> {
        PgStore::connect_schema(url, None).await
    }

    /// Connects, uses `schema` (created if missing) when given, applies migrations and starts
    /// listening for other nodes' changes.
    pub async fn connect_schema(url: &str, schema: Option<&str>) -> Result<PgStore> {
        if let Some(s) = schema
            && !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(StoreError::BadUrl {
                url: url.to_string(),
                reason: format!("invalid schema name {s:?}"),
            });
        }
        let search_path = schema.map(|s| format!("SET search_path TO {s}"));
        if let Some(s) = schema {
            let admin = PgPoolOptions::new().max_connections(1).connect(url).await?;
            admin
                .execute(AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {s}")))
                .await?;
            admin.close().await;
        }
        let set_path = search_path.clone();
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _meta| {
                let set_path = set_path.clone();
                Box::pin(async move {
                    if let Some(sql) = set_path {
                        conn.execute(AssertSqlSafe(sql)).await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        let channel = format!("wasmjobs_{}", schema.unwrap_or("public"));
        let (notices, _) = broadcast::channel(4096);
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(&channel).await?;
        let forward = notices.clone();
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(n) => {
                        for part in n.payload().split(',') {
                            let notice = match part {
                                "a" => Some(Notice::JobsAvailable),
                                run if run.starts_with('r') => {
                                    run[1..].parse().ok().map(Notice::Run)
                                }
                                run if run.starts_with('w') => {
                                    run[1..].parse().ok().map(Notice::RunRequest)
                                }
                                ended if ended.starts_with('e') => {
                                    ended[1..].parse().ok().map(Notice::Ended)
                                }
                                id => id.parse().ok().map(Notice::Events),
                            };
                            if let Some(notice) = notice {
                                let _ = forward.send(notice);
                            }
                        }
                    }
                    Err(e) => {
                        // PgListener reconnects by itself on the next recv; wake everyone so
                        // nothing waits on a notice lost in between.
                        tracing::warn!("postgres listener: {e}");
                        let _ = forward.send(Notice::JobsAvailable);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Ok(PgStore {
            pool,
            channel,
            notices,
        })
    }

    async fn announce(&self, notices: Vec<Notice>) {
        self.notify(notices).await;
    }

    /// Announces changes to every node (this one included, through its listener).
    async fn notify(&self, notices: impl IntoIterator<Item = Notice>) {
        let parts: Vec<String> = notices
            .into_iter()
            .map(|n| match n {
                Notice::JobsAvailable => "a".to_string(),
                Notice::Events(id) => id.to_string(),
                Notice::Run(id) => format!("r{id}"),
                Notice::RunRequest(id) => format!("w{id}"),
                Notice::Ended(id) => format!("e{id}"),
            })
            .collect();
        // NOTIFY payloads are limited to 8000 bytes.
        for chunk in parts.chunks(500) {
            if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&self.channel)
                .bind(chunk.join(","))
                .execute(&self.pool)
                .await
            {
                tracing::warn!("cannot NOTIFY: {e}");
            }
        }
    }
}

workflow_store!(
    PgStore,
    Postgres,
    sql: super::workflow_sql::postgres_placeholders,
    insert_jobs: insert_jobs_tx,
    writer: pool,
    reader: pool
);

/// Appends events to a job's history under the job row's lock; seq continues without gaps.
async fn push_events(tx: &mut Tx<'_>, job_id: JobId, events: &[NewEvent], now: i64) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let n = events.len() as i64;
    let last: i64 = sqlx::query_scalar(
        "UPDATE jobs SET event_seq = event_seq + $1 WHERE id = $2 RETURNING event_seq",
    )
    .bind(n)
    .bind(job_id)
    .fetch_one(&mut **tx)
    .await?;
    for (i, e) in events.iter().enumerate() {
        sqlx::query("INSERT INTO events (job_id, seq, kind, data, at) VALUES ($1, $2, $3, $4, $5)")
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
        let mut q = sqlx::QueryBuilder::<Postgres>::new(
            "INSERT INTO events (job_id, seq, kind, data, at) ",
        );
        q.push_values(chunk, |mut b, (job, seq, kind, data)| {
            b.push_bind(*job)
                .push_bind(*seq)
                .push_bind(*kind)
                .push_bind(data.as_str())
                .push_bind(now);
        });
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Inserts jobs and their first events inside `tx`; returns them and the notices to send once
/// `tx` commits. Used by job submission and by the workflow engine's steps.
async fn insert_jobs_tx(tx: &mut Tx<'_>, jobs: Vec<NewJob>, now: i64) -> Result<Inserted> {
    let mut out: Vec<Option<(Job, bool)>> = Vec::with_capacity(jobs.len());
    let mut notices = Vec::new();
    let mut any_queued = false;
    let mut events = Vec::new();
    // Jobs with an idempotency key one at a time (a key may repeat, even within the
    // batch); the others in one INSERT, ids drawn from the sequence up front so that each
    // row's id is known without relying on the order of RETURNING.
    let mut keyless: Vec<(usize, NewJob, JobState, i64)> = Vec::new();
    for j in jobs {
        let run_at = j.run_at.unwrap_or(now);
        let state = if run_at > now {
            JobState::Scheduled
        } else {
            JobState::Queued
        };
        let Some(key) = j.idempotency_key.clone() else {
            keyless.push((out.len(), j, state, run_at));
            out.push(None);
            continue;
        };
        let existing: Option<i64> =
            sqlx::query_scalar("SELECT id FROM jobs WHERE idempotency_key = $1")
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
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (module_digest, state, priority, run_at, input, limits, retry, grants,
                               idempotency_key, deadline_at, workflow_ref, input_from, created_at, updated_at,
                               event_seq)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 1) RETURNING id",
        )
        .bind(&j.module_digest)
        .bind(state.as_str())
        .bind(j.priority)
        .bind(run_at)
        .bind(&j.input)
        .bind(json(&j.limits))
        .bind(json(&j.retry))
        .bind(json(&j.grants))
        .bind(&key)
        .bind(j.deadline_at)
        .bind(j.workflow_ref.as_deref())
        .bind(j.input_from)
        .bind(now)
        .bind(now)
        .fetch_one(&mut **tx)
        .await?;
        out.push(Some((Job::inserted(id, j, state, run_at, now), true)));
    }
    if !keyless.is_empty() {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT nextval(pg_get_serial_sequence('jobs', 'id')) FROM generate_series(1, $1)",
        )
        .bind(keyless.len() as i64)
        .fetch_all(&mut **tx)
        .await?;
        if ids.len() != keyless.len() {
            return Err(StoreError::Corrupt(
                "the job id sequence returned too few ids".into(),
            ));
        }
        let mut cols = KeylessColumns::default();
        for (id, (_, j, state, run_at)) in ids.iter().zip(&keyless) {
            cols.id.push(*id);
            cols.module.push(j.module_digest.clone());
            cols.state.push(state.as_str());
            cols.priority.push(j.priority);
            cols.run_at.push(*run_at);
            cols.input.push(j.input.clone());
            cols.limits.push(json(&j.limits));
            cols.retry.push(json(&j.retry));
            cols.grants.push(json(&j.grants));
            cols.deadline_at.push(j.deadline_at);
            cols.workflow_ref.push(j.workflow_ref.clone());
            cols.input_from.push(j.input_from);
        }
        sqlx::query(
            "INSERT INTO jobs (id, module_digest, state, priority, run_at, input, limits, retry, grants,
                               deadline_at, workflow_ref, input_from, created_at, updated_at, event_seq)
             SELECT u.*, $13, $13, 1
             FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bytea[],
                         $7::text[], $8::text[], $9::text[], $10::bigint[], $11::text[], $12::bigint[]) AS u",
        )
        .bind(&cols.id)
        .bind(&cols.module)
        .bind(&cols.state)
        .bind(&cols.priority)
        .bind(&cols.run_at)
        .bind(&cols.input)
        .bind(&cols.limits)
        .bind(&cols.retry)
        .bind(&cols.grants)
        .bind(&cols.deadline_at)
        .bind(&cols.workflow_ref)
        .bind(&cols.input_from)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        for (id, (slot, j, state, run_at)) in ids.into_iter().zip(keyless) {
            out[slot] = Some((Job::inserted(id, j, state, run_at, now), true));
        }
    }
    let mut result = Vec::with_capacity(out.len());
    for entry in out {
        let (job, created) =
            entry.ok_or_else(|| StoreError::Corrupt("a submitted job got no row".into()))?;
        if created {
            let extra = if job.state == JobState::Scheduled {
                json!({ "run_at": job.run_at })
            } else {
                json!({})
            };
            events.extend(pending(job.id, 1, &[NewEvent::state(job.state, extra)]));
            any_queued |= job.state == JobState::Queued;
            notices.push(Notice::Events(job.id));
        }
        result.push((job, created));
    }
    write_events(tx, &events, now).await?;
    if any_queued {
        notices.push(Notice::JobsAvailable);
    }
    Ok((result, notices))
}

async fn fetch_job(tx: &mut Tx<'_>, id: JobId) -> Result<Option<Job>> {
    let row: Option<JobRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE"
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
         WHERE id = $1 AND state = 'running' AND attempts = $2 AND ($3::text IS NULL OR worker = $4)
         FOR UPDATE",
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
    let last_seq: i64 = sqlx::query_scalar(
        "UPDATE jobs SET state = $1, outcome = $2, error = $3, output = $4, worker = NULL, lease_until = NULL,
                run_at = COALESCE($5, run_at), finished_at = $6, updated_at = $7, event_seq = event_seq + $8
         WHERE id = $9 RETURNING event_seq",
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
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE attempts SET outcome = $1, trap = $2, error = $3, fuel_consumed = $4, peak_memory_bytes = $5,
                wall_time_us = $6, finished_at = $7
         WHERE job_id = $8 AND attempt = $9",
    )
    .bind(c.outcome.as_str())
    .bind(c.trap.as_deref())
    .bind(c.error.as_deref())
    .bind(i64::try_from(c.fuel_consumed).unwrap_or(i64::MAX))
    .bind(i64::try_from(c.peak_memory_bytes).unwrap_or(i64::MAX))
    .bind(i64::try_from(c.wall_time_us).unwrap_or(i64::MAX))
    .bind(now)
    .bind(c.job_id)
    .bind(i64::from(c.attempt))
    .execute(&mut **tx)
    .await?;
    events_out.extend(pending(c.job_id, last_seq, &events));
    Ok(Completed::Applied(state))
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    async fn put_module(&self, m: NewModule, now: i64) -> Result<(ModuleRecord, bool)> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO modules (digest, size, world, imports, bytes, created_at) VALUES ($1, $2, $3, $4, $5, $6)
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
                "INSERT INTO module_names (name, digest, updated_at) VALUES ($1, $2, $3)
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
                    (SELECT string_agg(n.name, chr(10)) FROM module_names n WHERE n.digest = m.digest) AS names
             FROM modules m
             WHERE m.digest = $1 OR m.digest = (SELECT digest FROM module_names WHERE name = $2)",
        )
        .bind(key)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(ModuleRow::into_record).transpose()
    }

    async fn module_bytes(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT bytes FROM modules WHERE digest = $1")
                .bind(digest)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn list_modules(&self) -> Result<Vec<ModuleRecord>> {
        let rows: Vec<ModuleRow> = sqlx::query_as(
            "SELECT m.digest, m.size, m.world, m.imports, m.created_at,
                    (SELECT string_agg(n.name, chr(10)) FROM module_names n WHERE n.digest = m.digest) AS names
             FROM modules m ORDER BY m.created_at, m.digest",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(ModuleRow::into_record).collect()
    }

    async fn insert_jobs(&self, jobs: Vec<NewJob>, now: i64) -> Result<Vec<(Job, bool)>> {
        let mut tx = self.pool.begin().await?;
        let (out, notices) = insert_jobs_tx(&mut tx, jobs, now).await?;
        tx.commit().await?;
        self.notify(notices).await;
        Ok(out)
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        let row: Option<JobRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(JobRow::into_job).transpose()
    }

    async fn attempts(&self, id: JobId) -> Result<Vec<Attempt>> {
        let rows: Vec<AttemptRow> = sqlx::query_as(
            "SELECT attempt, worker, outcome, trap, error, fuel_consumed, peak_memory_bytes, wall_time_us,
                    started_at, finished_at
             FROM attempts WHERE job_id = $1 ORDER BY attempt",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(AttemptRow::into_attempt).collect()
    }

    async fn list_jobs(&self, f: &JobFilter) -> Result<Vec<Job>> {
        let rows: Vec<JobRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE ($1::text IS NULL OR state = $2) AND ($3::text IS NULL OR module_digest = $4) AND ($5::bigint IS NULL OR id < $6)
             ORDER BY id DESC LIMIT $7"
        )))
        .bind(f.state.map(JobState::as_str))
        .bind(f.state.map(JobState::as_str))
        .bind(f.module_digest.as_deref())
        .bind(f.module_digest.as_deref())
        .bind(f.cursor)
        .bind(f.cursor)
        .bind(i64::from(f.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(JobRow::into_job).collect()
    }

    async fn count_by_state(&self) -> Result<Vec<(JobState, u64)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM jobs GROUP BY state")
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
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT job_id, seq, kind, data, at FROM events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let mut notices = Vec::new();
        // Jobs past their overall deadline never start.
        let expired: Vec<i64> = sqlx::query_scalar(
            "UPDATE jobs SET state = 'failed', error = $1, finished_at = $2, updated_at = $3
             WHERE state IN ('queued', 'scheduled') AND deadline_at IS NOT NULL AND deadline_at <= $4 RETURNING id",
        )
        .bind(DEADLINE_PASSED)
        .bind(now)
        .bind(now)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for id in expired {
            let e = NewEvent::state(JobState::Failed, json!({ "error": DEADLINE_PASSED }));
            push_events(&mut tx, id, &[e], now).await?;
            notices.push(Notice::Events(id));
            notices.push(Notice::Ended(id));
        }
        let due: Vec<i64> = sqlx::query_scalar(
            "UPDATE jobs SET state = 'queued', updated_at = $1
             WHERE id IN (SELECT id FROM jobs WHERE state = 'scheduled' AND run_at <= $2 FOR UPDATE SKIP LOCKED)
             RETURNING id",
        )
        .bind(now)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for id in due {
            push_events(
                &mut tx,
                id,
                &[NewEvent::state(JobState::Queued, json!({}))],
                now,
            )
            .await?;
            notices.push(Notice::Events(id));
        }
        let rows: Vec<ClaimRow> = sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE jobs SET state = 'running', worker = $1, lease_until = $2, attempts = attempts + 1, updated_at = $3,
                    event_seq = event_seq + 1
             WHERE id IN (SELECT id FROM jobs WHERE state = 'queued' ORDER BY priority DESC, run_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)
             RETURNING {JOB_COLUMNS}, {UPSTREAM_OUTPUT}"
        )))
        .bind(worker)
        .bind(now + lease_ms)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let (claimed, events, claim_notices) = claimed(rows, worker)?;
        notices.extend(claim_notices);
        for chunk in claimed.chunks(500) {
            let mut q = sqlx::QueryBuilder::<Postgres>::new(
                "INSERT INTO attempts (job_id, attempt, worker, started_at) ",
            );
            q.push_values(chunk, |mut b, c| {
                b.push_bind(c.id)
                    .push_bind(i64::from(c.attempt))
                    .push_bind(worker)
                    .push_bind(now);
            });
            q.build().execute(&mut *tx).await?;
        }
        write_events(&mut tx, &events, now).await?;
        if !notices.iter().any(|n| matches!(n, Notice::Ended(_))) {
            // Nothing ended here, so the claim need not wait for its WAL flush: were Postgres
            // to lose it in a crash, its jobs would be queued again, and the completion of any
            // of them (a synchronous commit, later in the WAL) flushes it first.
            tx.execute("SET LOCAL synchronous_commit = off").await?;
        }
        tx.commit().await?;
        self.notify(notices).await;
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
        let mut tx = self.pool.begin().await?;
        let holds: Option<i64> =
            sqlx::query_scalar("SELECT id FROM jobs WHERE id = $1 AND state = 'running' AND worker = $2 AND attempts = $3")
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
        self.notify([Notice::Events(id)]).await;
        Ok(true)
    }

    async fn complete(&self, completions: Vec<Completion>, now: i64) -> Result<Vec<Completed>> {
        // A fixed number of statements per batch, whatever its size: lock and read the jobs,
        // update them, update their attempts, insert their events.
        let mut tx = self.pool.begin().await?;
        let mut ids: Vec<i64> = completions.iter().map(|c| c.job_id).collect();
        ids.sort_unstable();
        ids.dedup();
        #[derive(sqlx::FromRow)]
        struct Snap {
            id: i64,
            state: String,
            attempts: i64,
            worker: Option<String>,
            retry: String,
            cancel_requested: bool,
            deadline_at: Option<i64>,
        }
        // Rows are locked in id order, as the heartbeat locks them: no deadlocks between them.
        let snaps: Vec<Snap> = sqlx::query_as(
            "SELECT id, state, attempts, worker, retry, cancel_requested, deadline_at FROM jobs
             WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let snaps: std::collections::HashMap<i64, Snap> =
            snaps.into_iter().map(|s| (s.id, s)).collect();

        let mut results = vec![Completed::Refused; completions.len()];
        let mut done = std::collections::HashSet::new();
        let mut jobs = CompletionColumns::default();
        let mut job_events: Vec<(JobId, Vec<NewEvent>)> = Vec::new();
        let mut notices = Vec::new();
        for (i, c) in completions.iter().enumerate() {
            let Some(snap) = snaps.get(&c.job_id) else {
                continue;
            };
            // The fence: still running this very attempt, on this worker; once per batch.
            if snap.state != "running"
                || snap.attempts != i64::from(c.attempt)
                || snap.worker.as_deref() != Some(c.worker.as_str())
                || !done.insert(c.job_id)
            {
                continue;
            }
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
            jobs.id.push(c.job_id);
            jobs.state.push(state.as_str());
            jobs.outcome.push(c.outcome.as_str());
            jobs.error.push(c.error.clone());
            jobs.output.push(keep_output.then(|| c.output.clone()));
            jobs.run_at.push(run_at);
            jobs.finished_at.push(finished_at);
            jobs.event_count.push(events.len() as i64);
            jobs.attempt.push(i64::from(c.attempt));
            jobs.trap.push(c.trap.clone());
            jobs.fuel
                .push(i64::try_from(c.fuel_consumed).unwrap_or(i64::MAX));
            jobs.peak_memory
                .push(i64::try_from(c.peak_memory_bytes).unwrap_or(i64::MAX));
            jobs.wall_time
                .push(i64::try_from(c.wall_time_us).unwrap_or(i64::MAX));
            job_events.push((c.job_id, events));
            notices.push(Notice::Events(c.job_id));
            if state.is_final() {
                notices.push(Notice::Ended(c.job_id));
            }
            if state == JobState::Scheduled {
                notices.push(Notice::JobsAvailable);
            }
            results[i] = Completed::Applied(state);
        }
        if !jobs.id.is_empty() {
            // Both updates below find their rows by primary key. Without fresh statistics (a
            // new or fast-growing table, autoanalyze not yet run or turned off) the planner
            // took `attempts` for small and joined it by a full scan: a 50,000-job run read
            // 24.7 M rows of it. For this transaction, an index is always the way in.
            tx.execute("SET LOCAL enable_seqscan = off").await?;
            let seqs: Vec<(i64, i64)> = sqlx::query_as(
                "UPDATE jobs SET state = v.state, outcome = v.outcome, error = v.error, output = v.output,
                        worker = NULL, lease_until = NULL, run_at = COALESCE(v.run_at, jobs.run_at),
                        finished_at = v.finished_at, updated_at = $9, event_seq = jobs.event_seq + v.n
                 FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::bigint[],
                             $7::bigint[], $8::bigint[]) AS v(id, state, outcome, error, output, run_at, finished_at, n)
                 WHERE jobs.id = v.id
                 RETURNING jobs.id, jobs.event_seq",
            )
            .bind(&jobs.id)
            .bind(&jobs.state)
            .bind(&jobs.outcome)
            .bind(&jobs.error)
            .bind(&jobs.output)
            .bind(&jobs.run_at)
            .bind(&jobs.finished_at)
            .bind(&jobs.event_count)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE attempts SET outcome = v.outcome, trap = v.trap, error = v.error,
                        fuel_consumed = v.fuel, peak_memory_bytes = v.peak, wall_time_us = v.wall, finished_at = $9
                 FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                             $7::bigint[], $8::bigint[]) AS v(job_id, attempt, outcome, trap, error, fuel, peak, wall)
                 WHERE attempts.job_id = ANY($1) AND attempts.job_id = v.job_id AND attempts.attempt = v.attempt",
            )
            .bind(&jobs.id)
            .bind(&jobs.attempt)
            .bind(&jobs.outcome)
            .bind(&jobs.trap)
            .bind(&jobs.error)
            .bind(&jobs.fuel)
            .bind(&jobs.peak_memory)
            .bind(&jobs.wall_time)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let seqs: std::collections::HashMap<i64, i64> = seqs.into_iter().collect();
            let mut rows = Vec::new();
            for (id, events) in &job_events {
                let last = *seqs
                    .get(id)
                    .ok_or_else(|| StoreError::Corrupt(format!("job {id} was not updated")))?;
                rows.extend(pending(*id, last, events));
            }
            write_events(&mut tx, &rows, now).await?;
        }
        tx.commit().await?;
        self.notify(notices).await;
        Ok(results)
    }

    async fn heartbeat(&self, worker: &str, now: i64, lease_ms: i64) -> Result<Vec<(JobId, bool)>> {
        let rows: Vec<(i64, bool)> = sqlx::query_as(
            "UPDATE jobs SET lease_until = $1
             WHERE id IN (SELECT id FROM jobs WHERE state = 'running' AND worker = $2 ORDER BY id FOR UPDATE)
             RETURNING id, cancel_requested",
        )
        .bind(now + lease_ms)
        .bind(worker)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn rescue_expired(&self, now: i64) -> Result<Vec<JobId>> {
        let mut tx = self.pool.begin().await?;
        let expired: Vec<(i64, i64, Option<String>)> = sqlx::query_as(
            "SELECT id, attempts, worker FROM jobs WHERE state = 'running' AND lease_until < $1 FOR UPDATE SKIP LOCKED",
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
        self.notify(notices).await;
        Ok(rescued)
    }

    async fn next_scheduled_at(&self) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT MIN(run_at) FROM jobs WHERE state = 'scheduled'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn cancel(&self, id: JobId, now: i64) -> Result<JobState> {
        let mut tx = self.pool.begin().await?;
        let job = fetch_job(&mut tx, id).await?.ok_or(StoreError::NotFound {
            what: "job",
            id: id.to_string(),
        })?;
        let state = match job.state {
            JobState::Scheduled | JobState::Queued => {
                sqlx::query(
                    "UPDATE jobs SET state = 'cancelled', outcome = NULL, finished_at = $1, updated_at = $2 WHERE id = $3",
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
                sqlx::query(
                    "UPDATE jobs SET cancel_requested = TRUE, updated_at = $1 WHERE id = $2",
                )
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
            self.notify([Notice::Events(id), Notice::Ended(id)]).await;
        } else {
            self.notify([Notice::Events(id)]).await;
        }
        Ok(state)
    }

    async fn retry(&self, id: JobId, now: i64) -> Result<JobState> {
        let mut tx = self.pool.begin().await?;
        let retry = retried(id, fetch_job(&mut tx, id).await?)?;
        sqlx::query(
            "UPDATE jobs SET state = 'queued', retry = $1, run_at = $2, cancel_requested = FALSE, outcome = NULL,
                    error = NULL, output = NULL, finished_at = NULL, deadline_at = NULL, updated_at = $3
             WHERE id = $4",
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
        self.notify([Notice::Events(id), Notice::JobsAvailable])
            .await;
        Ok(JobState::Queued)
    }

    async fn prune(&self, before: i64) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let cond = format!("SELECT id FROM jobs WHERE {}", super::rows::prunable("$1"));
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
            super::rows::prunable("$1")
        )))
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Finished workflow runs (their nodes, elements and events go with them).
        sqlx::query("DELETE FROM workflow_runs WHERE finished_at IS NOT NULL AND finished_at < $1")
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
            "INSERT INTO schedules (name, cron, target, next_run_at, created_at) VALUES ($1, $2, $3, $4, $5)
             RETURNING id, name, cron, target, next_run_at, created_at",
        )
        .bind(name.as_deref())
        .bind(cron)
        .bind(target.to_string())
        .bind(next_run_at)
        .bind(now)
        .fetch_one(&self.pool)
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
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(ScheduleRow::into_schedule).collect()
    }

    async fn delete_schedule(&self, key: &str) -> Result<bool> {
        let id: Option<i64> = key.parse().ok();
        let n = sqlx::query("DELETE FROM schedules WHERE id = $1 OR name = $2")
            .bind(id)
            .bind(key)
            .execute(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        // One writer per name at a time: versions are max + 1.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('wasmjobs.workflow.' || $1))")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let latest: Option<WorkflowRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE name = $1 ORDER BY version DESC LIMIT 1"
        )))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let (record, created) = next_workflow(latest, name, definition, now)?;
        if !created {
            return Ok((record, false));
        }
        sqlx::query(
            "INSERT INTO workflows (name, version, definition, created_at) VALUES ($1, $2, $3, $4)",
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
            "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE name = $1 AND ($2::bigint IS NULL OR version = $3)
             ORDER BY version DESC LIMIT 1"
        )))
        .bind(name)
        .bind(version)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.map(WorkflowRow::into_record).transpose()
    }

    async fn list_workflows(&self) -> Result<Vec<WorkflowRecord>> {
        let rows: Vec<WorkflowRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows w
             WHERE version = (SELECT MAX(version) FROM workflows WHERE name = w.name) ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(WorkflowRow::into_record).collect()
    }

    async fn take_due_schedules(
        &self,
        now: i64,
        next: for<'c> fn(&'c str, i64) -> Option<i64>,
    ) -> Result<Vec<Schedule>> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<ScheduleRow> = sqlx::query_as(
            "SELECT id, name, cron, target, next_run_at, created_at FROM schedules WHERE next_run_at <= $1
             FOR UPDATE SKIP LOCKED",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut due = Vec::new();
        for row in rows {
            let s = row.into_schedule()?;
            let following = next(&s.cron, now).unwrap_or(i64::MAX);
            sqlx::query("UPDATE schedules SET next_run_at = $1 WHERE id = $2")
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
