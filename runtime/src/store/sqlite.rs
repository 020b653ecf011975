//! The SQLite backend: the embedded default. WAL mode; one writer connection (SQLite allows one
//! writer at a time, so writes queue in-process instead of spinning on SQLITE_BUSY) and a few
//! readers. Claims are one atomic `UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING`.
//!
//! Statements run with rusqlite on the calling task's thread, a whole transaction per lock of
//! the writer (decision 005). SQLite's work per statement is a few microseconds; handing each
//! statement to a connection thread and back (as sqlx's SQLite driver does) cost 60–80 µs here,
//! most of a chained workflow step. sqlx still applies the migrations (`_sqlx_migrations`).

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde_json::{Value, json};
use sqlx::ConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tokio::sync::broadcast;

use super::history;
use super::model::*;
use super::rows::*;
use super::settings::{SETTINGS_GRACE_MS, Settings};
use super::workflow_sql as w;
use super::{Notice, Rescue, Result, Store, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a write waits for another process's write lock, and how long SQLite waits on a lock
/// inside a statement.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle readers kept open; more are opened when reads overlap.
const IDLE_READERS: usize = 8;

pub struct SqliteStore {
    /// `Arc` so that long writes (retention) can move it to a blocking thread.
    writer: Arc<tokio::sync::Mutex<Connection>>,
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
    notices: broadcast::Sender<Notice>,
    /// The background checkpointer runs while this lives.
    _checkpointer: Arc<()>,
}

type Tx<'a> = rusqlite::Transaction<'a>;

const DEADLINE_PASSED: &str = "the job's deadline passed before it could run";

/// Statements put together from shared pieces: built once, not on every call.
static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET state = 'running', worker = ?1, lease_until = ?2, attempts = attempts + 1,
                updated_at = MAX(?3, updated_at), attempt_started_at = MAX(?3, updated_at),
                event_seq = event_seq + 1
         WHERE id IN (SELECT id FROM jobs INDEXED BY jobs_queued WHERE state = 'queued'
                      ORDER BY priority DESC, run_at, id LIMIT ?4)
         RETURNING {}",
        claim_columns(true)
    )
});
static NODE_UPSERT: LazyLock<String> = LazyLock::new(|| {
    let values = "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    format!("{}{values}{}", w::NODE_UPSERT_HEAD, w::NODE_UPSERT_TAIL)
});
static ITEM_UPSERT: LazyLock<String> = LazyLock::new(|| {
    let values = "VALUES (?, ?, ?, ?, ?, ?)";
    format!("{}{values}{}", w::ITEM_UPSERT_HEAD, w::ITEM_UPSERT_TAIL)
});
static RUN_EVENT_INSERT: LazyLock<String> =
    LazyLock::new(|| format!("{}VALUES (?, ?, ?, ?, ?)", w::RUN_EVENTS_HEAD));

/// How long the start-up integrity check may take: on a large file it is cut short there
/// (and says so) rather than holding the start up.
const INTEGRITY_CHECK_BUDGET: Duration = Duration::from_secs(3);

/// SQLite's `quick_check` of the file (page structure, records, indexes' order), interrupted
/// after `budget`: the problems it found, or `None` when it found none (or ran out of time).
fn quick_check(conn: &Connection, budget: Duration) -> Result<Option<String>> {
    let interrupt = conn.get_interrupt_handle();
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if wait.recv_timeout(budget).is_err() {
            interrupt.interrupt();
        }
    });
    let checked = (|| -> rusqlite::Result<Vec<String>> {
        let mut stmt = conn.prepare("PRAGMA quick_check(5)")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    })();
    let _ = done.send(());
    let _ = watchdog.join();
    match checked {
        Ok(rows) if rows.iter().all(|r| r == "ok") => Ok(None),
        Ok(rows) => Ok(Some(format!("quick_check: {}", rows.join("; ")))),
        Err(rusqlite::Error::SqliteFailure(f, _))
            if f.code == rusqlite::ffi::ErrorCode::OperationInterrupted =>
        {
            tracing::info!(
                "the start-up integrity check of the database was cut short after {budget:?}"
            );
            Ok(None)
        }
        Err(e) => Ok(Some(e.to_string())),
    }
}

/// Opens a connection with the settings every connection uses.
fn connect(path: &PathBuf, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // In WAL mode NORMAL survives a process crash (kill -9); FULL adds power-loss safety.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path` and applies migrations.
    pub async fn open(path: &str) -> Result<SqliteStore> {
        if path.contains(":memory:") || path.contains("mode=memory") {
            return Err(StoreError::BadUrl {
                url: path.to_string(),
                reason: "an in-memory SQLite database keeps nothing and cannot be shared by the \
                         store's connections: give a file path"
                    .into(),
            });
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
            .map_err(|e| StoreError::BadUrl {
                url: path.to_string(),
                reason: e.to_string(),
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let file = options.get_filename().to_path_buf();
        // Opening is the operator's: the driver's words say why a file cannot be used.
        let mut migrate = options
            .connect()
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", file.display())))?;
        MIGRATOR.run(&mut migrate).await?;
        sqlx::Connection::close(migrate).await?;

        let writer = connect(&file, false)?;
        if let Some(problem) = quick_check(&writer, INTEGRITY_CHECK_BUDGET)? {
            return Err(StoreError::Corrupt(format!(
                "the database file {} is damaged ({problem}): restore it from a backup, or move it aside to start with an empty one",
                file.display()
            )));
        }
        // The writer never checkpoints: copying the WAL into the database (and syncing it)
        // inside a commit stalls every write queued behind it for tens of milliseconds. A
        // connection of its own does it in the background instead (`checkpointer`).
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpoint = connect(&file, false)?;
        let alive = Arc::new(());
        let store = Arc::downgrade(&alive);
        std::thread::Builder::new()
            .name("wasmjobs-checkpoint".into())
            .spawn(move || checkpointer(checkpoint, store))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the checkpointer: {e}")))?;
        let (notices, _) = broadcast::channel(4096);
        Ok(SqliteStore {
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            readers: Mutex::new(Vec::new()),
            path: file,
            notices,
            _checkpointer: alive,
        })
    }

    fn notify(&self, notices: impl IntoIterator<Item = Notice>) {
        for n in notices {
            let _ = self.notices.send(n);
        }
    }

    /// Runs `f` in one write transaction (`BEGIN IMMEDIATE`), on this thread: committed if it
    /// returns `Ok`, rolled back otherwise. Writers queue on the one writer connection.
    ///
    /// Another process on the same file (`serve` and `worker`s on one host) may hold SQLite's
    /// write lock. Waiting for it is the one wait a transaction can meet (in WAL mode readers
    /// never block a writer), and it happens at `BEGIN IMMEDIATE`: that step is retried on the
    /// runtime's timer, never in SQLite's busy handler, which would sleep on this thread.
    async fn write<T>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        let conn = self.writer.lock().await;
        let mut f = Some(f);
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match try_write(&conn, &mut f) {
                Ok(out) => return out,
                Err(_) if started.elapsed() < BUSY_TIMEOUT => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(busy) => return Err(busy.into()),
            }
        }
    }

    /// Runs `f` on a reader, on this thread, inside one read transaction (one snapshot).
    fn read<T>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.reader()?;
        let out = in_snapshot(&mut conn, f);
        self.put_back(conn);
        out
    }

    /// [`read`](Self::read) for reads whose cost grows with the store (whole-table counts):
    /// on a blocking thread, so that they never hold up the tasks of a runtime thread.
    async fn read_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let mut conn = self.reader()?;
        let (conn, out) = tokio::task::spawn_blocking(move || {
            let out = in_snapshot(&mut conn, f);
            (conn, out)
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("a read stopped: {e}")))?;
        self.put_back(conn);
        out
    }

    /// An idle reader, or a new one when every reader is busy.
    fn reader(&self) -> Result<Connection> {
        match self.readers.lock().ok().and_then(|mut r| r.pop()) {
            Some(c) => Ok(c),
            None => connect(&self.path, true),
        }
    }

    fn put_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.readers.lock()
            && idle.len() < IDLE_READERS
        {
            idle.push(conn);
        }
    }
}

fn in_snapshot<T>(conn: &mut Connection, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let out = f(&tx)?;
    tx.finish()?;
    Ok(out)
}

/// `BEGIN IMMEDIATE` without waiting, then `f` (taken) and `COMMIT`. `Err` (SQLite's "database
/// is locked") if another connection holds the write lock: `f` is left for the next try.
fn try_write<T, F: FnOnce(&Tx<'_>) -> Result<T>>(
    conn: &Connection,
    f: &mut Option<F>,
) -> std::result::Result<Result<T>, rusqlite::Error> {
    if let Err(e) = conn.busy_timeout(Duration::ZERO) {
        return Ok(Err(e.into()));
    }
    // A shared borrow, so that the error path can restore the timeout.
    let tx = match rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let _ = conn.busy_timeout(BUSY_TIMEOUT);
            return match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::DatabaseBusy =>
                {
                    Err(e)
                }
                e => Ok(Err(e.into())),
            };
        }
    };
    let run = || {
        // Inside the transaction (a WAL restart at commit, say), waiting is SQLite's again.
        tx.busy_timeout(BUSY_TIMEOUT)?;
        let f = f
            .take()
            .ok_or_else(|| StoreError::Corrupt("a write ran twice".into()))?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    };
    Ok(run())
}

fn in_transaction<T>(conn: &mut Connection, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let out = f(&tx)?;
    tx.commit()?;
    Ok(out)
}

/// Copies the WAL into the database every 200 ms without blocking writers or readers
/// (`PASSIVE`); ends when the store is dropped.
fn checkpointer(conn: Connection, store: std::sync::Weak<()>) {
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if store.upgrade().is_none() {
            return;
        }
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        if let Err(e) = done {
            crate::throttle::warn(format!("WAL checkpoint failed: {e}"));
        }
    }
}

/// Every row of a query (its statement prepared once per connection), each read by `map`.
fn query<T>(
    tx: &Tx<'_>,
    sql: &str,
    args: impl rusqlite::Params,
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = tx.prepare_cached(sql)?;
    let out = stmt
        .query_map(args, map)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(out)
}

/// Rows of a query, each read with [`FromSqlite`].
fn rows<T: FromSqlite>(tx: &Tx<'_>, sql: &str, args: impl rusqlite::Params) -> Result<Vec<T>> {
    query(tx, sql, args, T::from_sqlite)
}

/// The first column of each row of a query.
fn column<T: rusqlite::types::FromSql>(
    tx: &Tx<'_>,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<T>> {
    query(tx, sql, args, |r| r.get(0))
}

/// The first column of the first row, if there is one.
fn scalar<T: rusqlite::types::FromSql>(
    tx: &Tx<'_>,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Option<T>> {
    Ok(tx
        .prepare_cached(sql)?
        .query_row(args, |r| r.get(0))
        .optional()?)
}

/// Appends events to a job's history under the job row's lock; seq continues without gaps.
fn push_events(tx: &Tx<'_>, job_id: JobId, events: &[NewEvent], now: i64) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let last: i64 = scalar(
        tx,
        "UPDATE jobs SET event_seq = event_seq + ? WHERE id = ? RETURNING event_seq",
        params![events.len() as i64, job_id],
    )?
    .ok_or_else(|| StoreError::Corrupt(format!("job {job_id} vanished")))?;
    write_events(tx, &pending(job_id, last, events, now))
}

/// Writes events (their seqs allocated): a state change as a line of its job's history, any
/// other event as a row of `events` (one cached statement each, run once per event).
fn write_events(tx: &Tx<'_>, rows: &[PendingEvent]) -> Result<()> {
    let mut row = tx.prepare_cached(
        "INSERT INTO events (job_id, seq, kind, data, at) VALUES (?, ?, ?, ?, ?)",
    )?;
    let mut line = tx.prepare_cached("UPDATE jobs SET history = history || ? WHERE id = ?")?;
    for (job, seq, kind, data, at) in rows {
        if *kind == "state" {
            let text = format!(
                "{{\"seq\":{seq},\"at\":{at},{}\n",
                history::tail_text(kind, data)
            );
            line.execute(params![text, job])?;
        } else {
            row.execute(params![job, seq, kind, data, at])?;
        }
    }
    Ok(())
}

/// Stores `settings` if they are not stored yet, marked used at `now`.
fn store_settings(tx: &Tx<'_>, settings: &Settings, now: i64) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO job_settings (key, limits, retry, grants, used_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (key) DO UPDATE SET used_at = excluded.used_at",
    )?
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
fn insert_jobs_tx(tx: &Tx<'_>, jobs: Vec<NewJob>, now: i64) -> Result<Inserted> {
    let mut out = Vec::with_capacity(jobs.len());
    let mut notices = Vec::new();
    let mut any_queued = false;
    // Jobs submitted together nearly always share their settings: stored once per run of them.
    let mut last: Option<Settings> = None;
    for j in jobs {
        if let Some(key) = &j.idempotency_key {
            let existing: Option<i64> =
                scalar(tx, "SELECT id FROM jobs WHERE idempotency_key = ?", [key])?;
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
        let id: i64 = scalar(
            tx,
            "INSERT INTO jobs (module_digest, state, priority, run_at, input, settings,
                               idempotency_key, deadline_at, workflow_ref, input_from, created_at, updated_at,
                               event_seq, history)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?) RETURNING id",
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
                now,
                history::line(1, now, &created_event(state, run_at)),
            ],
        )?
        .ok_or_else(|| StoreError::Corrupt("insert returned no id".into()))?;
        last = Some(settings);
        any_queued |= state == JobState::Queued;
        notices.push(Notice::Events(id));
        out.push((Job::inserted(id, j, state, run_at, now), true));
    }
    if any_queued {
        notices.push(Notice::JobsAvailable);
    }
    Ok((out, notices))
}

fn fetch_job(tx: &Tx<'_>, id: JobId) -> Result<Option<Job>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?");
    let row: Option<JobRow> = rows(tx, &sql, [id])?.pop();
    row.map(JobRow::into_job).transpose()
}

/// Applies the end of an attempt: `fence` is the worker that must still hold it (`None` for the
/// rescuer, which acts on expired leases).
fn apply_completion(
    events_out: &mut Vec<PendingEvent>,
    tx: &Tx<'_>,
    c: &Completion,
    fence: Option<&str>,
    now: i64,
) -> Result<Completed> {
    let snap = tx
        .prepare_cached(
            "SELECT attempts, (SELECT s.retry FROM job_settings s WHERE s.key = jobs.settings),
                    cancel_requested, deadline_at, updated_at, lost_attempts, attempt_started_at FROM jobs
             WHERE id = ? AND state = 'running' AND attempts = ? AND (? IS NULL OR worker = ?)",
        )?
        .query_row(params![c.job_id, i64::from(c.attempt), fence, fence], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<i64>>(6)?,
            ))
        })
        .optional()?;
    let Some((attempts, retry, cancel_requested, deadline_at, last, lost_attempts, started)) = snap
    else {
        return Ok(Completed::Refused);
    };
    // Never before the job's last transition: `now` is the completing node's clock reading,
    // which may be a little behind the claim's (see `claimed`).
    let now = now.max(last);
    let Ending {
        state,
        run_at,
        finished_at,
        keep_output,
        state_data,
    } = ending(
        EndingSnapshot {
            attempts,
            lost_attempts,
            retry: &retry,
            cancel_requested,
            deadline_at,
        },
        c,
        now,
    )?;
    let last_seq: i64 = scalar(
        tx,
        "UPDATE jobs SET state = ?, outcome = ?, error = ?, output = ?, worker = NULL, lease_until = NULL,
                run_at = COALESCE(?, run_at), finished_at = ?, updated_at = ?, event_seq = event_seq + ?,
                lost_attempts = lost_attempts + ?, attempt_started_at = NULL,
                ended_attempts = ended_attempts || ?
         WHERE id = ? RETURNING event_seq",
        params![
            state.as_str(),
            c.outcome.as_str(),
            c.error,
            keep_output.then_some(c.output.as_slice()),
            run_at,
            finished_at,
            now,
            c.events.len() as i64 + 1,
            i64::from(c.outcome == wasmjobs_host::Outcome::Lost),
            history::attempt_line(c, started.unwrap_or(now), now),
            c.job_id
        ],
    )?
    .ok_or_else(|| {
        StoreError::Corrupt(format!("job {} vanished while completing it", c.job_id))
    })?;
    // The attempt's own events, then the state event, last.
    events_out.extend(pending(c.job_id, last_seq - 1, &c.events, now));
    events_out.push((c.job_id, last_seq, "state", state_data, now));
    Ok(Completed::Applied(state))
}

/// `true` if `e` is a UNIQUE constraint failure.
fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Conflict(_))
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
        let inserted = self
            .write(|tx| {
                let inserted = tx
                    .prepare_cached(
                        "INSERT INTO modules (digest, size, world, imports, bytes, created_at)
                         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING",
                    )?
                    .execute(params![
                        m.digest,
                        m.bytes.len() as i64,
                        m.world,
                        json(&m.imports),
                        m.bytes,
                        now
                    ])?
                    == 1;
                if let Some(name) = &m.name {
                    let set = tx
                        .prepare_cached(
                            "INSERT INTO module_names (name, digest, owner, updated_at) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (name) DO UPDATE SET digest = excluded.digest, owner = excluded.owner, updated_at = excluded.updated_at
                             WHERE module_names.digest <> excluded.digest AND (?5 OR module_names.owner = excluded.owner)",
                        )?
                        .execute(params![name, m.digest, m.owner, now, m.may_move])?;
                    if set == 0 {
                        let current: Option<String> =
                            scalar(tx, "SELECT digest FROM module_names WHERE name = ?", [name])?;
                        if current.as_deref() != Some(m.digest.as_str()) {
                            return Err(StoreError::name_taken(name));
                        }
                    }
                }
                Ok(inserted)
            })
            .await?;
        let record = self.get_module(&m.digest).await?.ok_or_else(|| {
            StoreError::Corrupt(format!("module {} vanished after insert", m.digest))
        })?;
        Ok((record, inserted))
    }

    async fn get_module(&self, key: &str) -> Result<Option<ModuleRecord>> {
        let row: Option<ModuleRow> = self.read(|tx| {
            Ok(rows(
                tx,
                "SELECT m.digest, m.size, m.world, m.imports, m.created_at,
                        (SELECT group_concat(n.name, char(10)) FROM module_names n WHERE n.digest = m.digest) AS names
                 FROM modules m
                 WHERE m.digest = ? OR m.digest = (SELECT digest FROM module_names WHERE name = ?)",
                [key, key],
            )?
            .pop())
        })?;
        row.map(ModuleRow::into_record).transpose()
    }

    async fn module_bytes(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        self.read(|tx| scalar(tx, "SELECT bytes FROM modules WHERE digest = ?", [digest]))
    }

    async fn list_modules(&self) -> Result<Vec<ModuleRecord>> {
        let rows: Vec<ModuleRow> = self.read(|tx| {
            rows(
                tx,
                "SELECT m.digest, m.size, m.world, m.imports, m.created_at,
                        (SELECT group_concat(n.name, char(10)) FROM module_names n WHERE n.digest = m.digest) AS names
                 FROM modules m ORDER BY m.created_at, m.digest",
                [],
            )
        })?;
        rows.into_iter().map(ModuleRow::into_record).collect()
    }

    async fn insert_jobs(&self, jobs: Vec<NewJob>, now: i64) -> Result<Vec<(Job, bool)>> {
        let (out, notices) = self.write(|tx| insert_jobs_tx(tx, jobs, now)).await?;
        self.notify(notices);
        Ok(out)
    }

    async fn job_output(&self, id: JobId) -> Result<Option<Vec<u8>>> {
        self.read(|tx| Ok(scalar::<Option<Vec<u8>>>(tx, w::JOB_OUTPUT, [id])?.flatten()))
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.read(|tx| fetch_job(tx, id))
    }

    async fn attempts(&self, id: JobId) -> Result<Vec<Attempt>> {
        type Row = (String, String, i64, Option<String>, Option<i64>);
        let row: Option<Row> = self.read(|tx| {
            Ok(query(
                tx,
                "SELECT ended_attempts, state, attempts, worker, attempt_started_at FROM jobs WHERE id = ?",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )?
            .pop())
        })?;
        let Some((ended, state, attempts, worker, started)) = row else {
            return Ok(Vec::new());
        };
        attempts_of(id, &ended, &state, attempts, worker, started)
    }

    async fn list_jobs(&self, f: &JobFilter) -> Result<Vec<Job>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR module_digest = ?2) AND (?3 IS NULL OR id < ?3)
             ORDER BY id DESC LIMIT ?4"
        );
        let rows: Vec<JobRow> = self.read(|tx| {
            rows(
                tx,
                &sql,
                params![
                    f.state.map(JobState::as_str),
                    f.module_digest,
                    f.cursor,
                    i64::from(f.limit)
                ],
            )
        })?;
        rows.into_iter().map(JobRow::into_job).collect()
    }

    async fn count_by_state(&self) -> Result<Vec<(JobState, u64)>> {
        let rows: Vec<(String, i64)> = self
            .read_blocking(|tx| {
                query(
                    tx,
                    "SELECT state, COUNT(*) FROM jobs GROUP BY state",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
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
            let history = scalar(tx, "SELECT history FROM jobs WHERE id = ?", [id])?;
            let rows = rows(
                tx,
                "SELECT job_id, seq, kind, data, at FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
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

    async fn claim(
        &self,
        worker: &str,
        limit: u32,
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<Claimed>> {
        let (claimed, notices) = self
            .write(|tx| {
                let mut notices = Vec::new();
                // Jobs past their overall deadline never start, and scheduled jobs whose time
                // came are queued. Each sweep names its partial index: without statistics the
                // planner would scan `jobs_state_id` and sort.
                // Each at the later of `now` and the job's last transition (the right-hand
                // sides read the row before the update).
                let failed: Vec<(i64, i64)> = rows(
                    tx,
                    "UPDATE jobs INDEXED BY jobs_deadline
                     SET state = 'failed', error = ?, finished_at = MAX(?, updated_at), updated_at = MAX(?, updated_at)
                     WHERE state IN ('queued', 'scheduled') AND deadline_at IS NOT NULL AND deadline_at <= ?
                     RETURNING id, updated_at",
                    params![DEADLINE_PASSED, now, now, now],
                )?;
                let queued: Vec<(i64, i64)> = rows(
                    tx,
                    "UPDATE jobs INDEXED BY jobs_scheduled SET state = 'queued', updated_at = MAX(?, updated_at)
                     WHERE state = 'scheduled' AND run_at <= ? RETURNING id, updated_at",
                    params![now, now],
                )?;
                for (id, at) in failed {
                    let e = NewEvent::state(JobState::Failed, json!({ "error": DEADLINE_PASSED }));
                    push_events(tx, id, &[e], at)?;
                    notices.extend([Notice::Events(id), Notice::Ended(id)]);
                }
                for (id, at) in queued {
                    push_events(tx, id, &[NewEvent::state(JobState::Queued, json!({}))], at)?;
                    notices.push(Notice::Events(id));
                }
                let rows: Vec<ClaimRow> = rows(
                    tx,
                    &CLAIM,
                    params![worker, now + lease_ms, now, i64::from(limit)],
                )?;
                let (claimed, events, claim_notices) = claimed(rows, worker)?;
                notices.extend(claim_notices);
                write_events(tx, &events)?;
                Ok((claimed, notices))
            })
            .await?;
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
        let held = self
            .write(|tx| {
                let holds: Option<i64> = scalar(
                    tx,
                    "SELECT id FROM jobs WHERE id = ? AND state = 'running' AND worker = ? AND attempts = ?",
                    params![id, worker, i64::from(attempt)],
                )?;
                if holds.is_none() {
                    return Ok(false);
                }
                push_events(tx, id, events, now)?;
                Ok(true)
            })
            .await?;
        if held {
            self.notify([Notice::Events(id)]);
        }
        Ok(held)
    }

    async fn complete(&self, completions: &[Completion], now: i64) -> Result<Vec<Completed>> {
        let (results, notices) = self
            .write(|tx| {
                let mut notices = Vec::new();
                let mut events = Vec::new();
                let mut results = Vec::with_capacity(completions.len());
                for c in completions {
                    let r = apply_completion(&mut events, tx, c, Some(&c.worker), now)?;
                    if let Completed::Applied(state) = r {
                        notices.push(Notice::Events(c.job_id));
                        if state.is_final() {
                            notices.push(Notice::Ended(c.job_id));
                        }
                        if state == JobState::Scheduled {
                            notices.push(Notice::JobsAvailable);
                        }
                    }
                    results.push(r);
                }
                write_events(tx, &events)?;
                Ok((results, notices))
            })
            .await?;
        self.notify(notices);
        Ok(results)
    }

    async fn heartbeat(
        &self,
        worker: &str,
        jobs: &[JobId],
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<(JobId, bool)>> {
        let ids = serde_json::Value::from(jobs).to_string();
        self.write(|tx| {
            query(
                tx,
                "UPDATE jobs SET lease_until = ?
                 WHERE id IN (SELECT value FROM json_each(?)) AND state = 'running' AND worker = ?
                 RETURNING id, cancel_requested",
                params![now + lease_ms, ids, worker],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .await
    }

    async fn rescue(&self, which: Rescue<'_>, now: i64) -> Result<Vec<JobId>> {
        let rescued = self
            .write(|tx| {
                let read = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?));
                let expired: Vec<(i64, i64, Option<String>)> = match which {
                    Rescue::Expired { keep } => query(
                        tx,
                        "SELECT id, attempts, worker FROM jobs WHERE state = 'running' AND lease_until < ?",
                        [now],
                        read,
                    )?
                    .into_iter()
                    .filter(|(id, _, _)| !keep.contains(id))
                    .collect(),
                    Rescue::Workers(workers) => {
                        let mut all = Vec::new();
                        for w in workers {
                            all.extend(query(
                                tx,
                                "SELECT id, attempts, worker FROM jobs WHERE state = 'running' AND worker = ?",
                                [w],
                                read,
                            )?);
                        }
                        all
                    }
                };
                let mut rescued = Vec::new();
                let mut events = Vec::new();
                for (id, attempts, worker) in expired {
                    let c = Completion::lost(id, attempts, worker);
                    if let Completed::Applied(_) =
                        apply_completion(&mut events, tx, &c, None, now)?
                    {
                        rescued.push(id);
                    }
                }
                write_events(tx, &events)?;
                Ok(rescued)
            })
            .await?;
        // A rescued job may have ended (failed, no attempts left): followers of ends look.
        let mut notices: Vec<Notice> = rescued
            .iter()
            .flat_map(|id| [Notice::Events(*id), Notice::Ended(*id)])
            .collect();
        notices.push(Notice::JobsAvailable);
        self.notify(notices);
        Ok(rescued)
    }

    async fn running_workers(&self) -> Result<Vec<String>> {
        self.read(|tx| {
            query(
                tx,
                "SELECT DISTINCT worker FROM jobs WHERE state = 'running' AND worker IS NOT NULL",
                [],
                |r| r.get(0),
            )
        })
    }

    async fn release(&self, worker: &str, jobs: &[(JobId, u32)], now: i64) -> Result<Vec<JobId>> {
        let released = self
            .write(|tx| {
                let mut released = Vec::new();
                for &(id, attempt) in jobs {
                    let seq: Option<i64> = scalar(
                        tx,
                        "UPDATE jobs SET state = 'queued', worker = NULL, lease_until = NULL,
                                attempts = attempts - 1, attempt_started_at = NULL,
                                updated_at = MAX(?, updated_at), event_seq = event_seq + 1
                         WHERE id = ? AND state = 'running' AND worker = ? AND attempts = ?
                         RETURNING event_seq",
                        params![now, id, worker, i64::from(attempt)],
                    )?;
                    let Some(seq) = seq else { continue };
                    let event = released_event(worker);
                    write_events(tx, &pending(id, seq, std::slice::from_ref(&event), now))?;
                    released.push(id);
                }
                Ok(released)
            })
            .await?;
        let mut notices: Vec<Notice> = released.iter().map(|id| Notice::Events(*id)).collect();
        if !released.is_empty() {
            notices.push(Notice::JobsAvailable);
        }
        self.notify(notices);
        Ok(released)
    }

    async fn probe_write(&self, node: &str, now: i64) -> Result<()> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO nodes (id, seen_at) VALUES (?, ?)
                 ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
            )?
            .execute(params![node, now])?;
            Ok(())
        })
        .await
    }

    async fn next_scheduled_at(&self) -> Result<Option<i64>> {
        self.read(|tx| {
            Ok(scalar::<Option<i64>>(
                tx,
                "SELECT MIN(run_at) FROM jobs WHERE state = 'scheduled'",
                [],
            )?
            .flatten())
        })
    }

    async fn cancel(&self, id: JobId, now: i64) -> Result<JobState> {
        let (before, after) = self
            .write(|tx| {
                let job = fetch_job(tx, id)?.ok_or(StoreError::NotFound {
                    what: "job",
                    id: id.to_string(),
                })?;
                let now = transition_at(&job, now);
                let state = match job.state {
                    JobState::Scheduled | JobState::Queued => {
                        tx.prepare_cached(
                            "UPDATE jobs SET state = 'cancelled', outcome = NULL, finished_at = ?, updated_at = ?
                             WHERE id = ?",
                        )?
                        .execute(params![now, now, id])?;
                        push_events(tx, id, &[NewEvent::state(JobState::Cancelled, json!({}))], now)?;
                        JobState::Cancelled
                    }
                    JobState::Running if !job.cancel_requested => {
                        tx.prepare_cached(
                            "UPDATE jobs SET cancel_requested = TRUE, updated_at = ? WHERE id = ?",
                        )?
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
                Ok((job.state, state))
            })
            .await?;
        if after == JobState::Cancelled && before != JobState::Cancelled {
            self.notify([Notice::Events(id), Notice::Ended(id)]);
        } else {
            self.notify([Notice::Events(id)]);
        }
        Ok(after)
    }

    async fn retry(&self, id: JobId, now: i64) -> Result<JobState> {
        self.write(|tx| {
            let job = fetch_job(tx, id)?;
            let (retry, now) = retried(id, job.clone(), now)?;
            // A fresh budget is new settings for this job (the others that shared its
            // settings keep theirs).
            let settings = job
                .map(|j| Settings::of_parts(&j.limits, &retry, &j.grants))
                .ok_or_else(|| StoreError::NotFound {
                    what: "job",
                    id: id.to_string(),
                })?;
            store_settings(tx, &settings, now)?;
            tx.prepare_cached(
                "UPDATE jobs SET state = 'queued', settings = ?, run_at = ?, cancel_requested = FALSE, outcome = NULL,
                        error = NULL, output = NULL, finished_at = NULL, deadline_at = NULL, updated_at = ?
                 WHERE id = ?",
            )?
            .execute(params![&settings.key[..], now, now, id])?;
            push_events(
                tx,
                id,
                &[NewEvent::state(JobState::Queued, json!({ "retried": true }))],
                now,
            )
        })
        .await?;
        self.notify([Notice::Events(id), Notice::JobsAvailable]);
        Ok(JobState::Queued)
    }

    async fn prune(&self, before: i64) -> Result<u64> {
        // Retention may delete many rows: on a blocking thread, holding the writer.
        let conn = self.writer.clone().lock_owned().await;
        let prune = move || {
            let mut conn = conn;
            in_transaction(&mut conn, |tx| {
                let cond = format!("SELECT id FROM jobs WHERE {}", prunable("?"));
                tx.execute(
                    &format!("DELETE FROM events WHERE job_id IN ({cond})"),
                    [before],
                )?;
                let n = tx.execute(
                    &format!("DELETE FROM jobs WHERE {}", prunable("?")),
                    [before],
                )?;
                // Then the settings no job refers to, unused since well before `before` (a
                // submission touches the settings it relies on).
                tx.execute(
                    "DELETE FROM job_settings
                     WHERE used_at < ? AND key NOT IN (SELECT settings FROM jobs)",
                    [before.saturating_sub(SETTINGS_GRACE_MS)],
                )?;
                // Finished workflow runs (their nodes, elements and events go with them).
                tx.execute(
                    "DELETE FROM workflow_runs WHERE finished_at IS NOT NULL AND finished_at < ?",
                    [before],
                )?;
                Ok(n as u64)
            })
        };
        tokio::task::spawn_blocking(prune)
            .await
            .map_err(|e| StoreError::Corrupt(format!("retention stopped: {e}")))?
    }

    async fn add_schedule(
        &self,
        name: Option<String>,
        cron: &str,
        target: Value,
        next_run_at: i64,
        now: i64,
    ) -> Result<Schedule> {
        let row: Option<ScheduleRow> = self
            .write(|tx| {
                Ok(rows(
                    tx,
                    "INSERT INTO schedules (name, cron, target, next_run_at, created_at) VALUES (?, ?, ?, ?, ?)
                     RETURNING id, name, cron, target, next_run_at, created_at",
                    params![name, cron, target.to_string(), next_run_at, now],
                )?
                .pop())
            })
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!(
                        "a schedule named {:?} already exists",
                        name.as_deref().unwrap_or("")
                    ))
                } else {
                    e
                }
            })?;
        row.ok_or_else(|| StoreError::Corrupt("schedule insert returned nothing".into()))?
            .into_schedule()
    }

    async fn list_schedules(&self) -> Result<Vec<Schedule>> {
        let rows: Vec<ScheduleRow> = self.read(|tx| {
            rows(
                tx,
                "SELECT id, name, cron, target, next_run_at, created_at FROM schedules ORDER BY id",
                [],
            )
        })?;
        rows.into_iter().map(ScheduleRow::into_schedule).collect()
    }

    async fn delete_schedule(&self, key: &str) -> Result<bool> {
        let id: Option<i64> = key.parse().ok();
        let n = self
            .write(|tx| {
                Ok(tx
                    .prepare_cached("DELETE FROM schedules WHERE id = ? OR name = ?")?
                    .execute(params![id, key])?)
            })
            .await?;
        Ok(n > 0)
    }

    async fn put_workflow(
        &self,
        name: &str,
        definition: &str,
        now: i64,
    ) -> Result<(WorkflowRecord, bool)> {
        let sql = format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE name = ? ORDER BY version DESC LIMIT 1"
        );
        self.write(|tx| {
            let latest: Option<WorkflowRow> = rows(tx, &sql, [name])?.pop();
            let (record, created) = next_workflow(latest, name, definition, now)?;
            if created {
                tx.prepare_cached(
                    "INSERT INTO workflows (name, version, definition, created_at) VALUES (?, ?, ?, ?)",
                )?
                .execute(params![name, record.version, definition, now])?;
            }
            Ok((record, created))
        })
        .await
    }

    async fn get_workflow(
        &self,
        name: &str,
        version: Option<i64>,
    ) -> Result<Option<WorkflowRecord>> {
        let sql = format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE name = ?1 AND (?2 IS NULL OR version = ?2)
             ORDER BY version DESC LIMIT 1"
        );
        let row: Option<WorkflowRow> =
            self.read(|tx| Ok(rows(tx, &sql, params![name, version])?.pop()))?;
        row.map(WorkflowRow::into_record).transpose()
    }

    async fn list_workflows(&self) -> Result<Vec<WorkflowRecord>> {
        let sql = format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows w
             WHERE version = (SELECT MAX(version) FROM workflows WHERE name = w.name) ORDER BY name"
        );
        let rows: Vec<WorkflowRow> = self.read(|tx| rows(tx, &sql, []))?;
        rows.into_iter().map(WorkflowRow::into_record).collect()
    }

    async fn take_due_schedules(
        &self,
        now: i64,
        next: for<'c> fn(&'c str, i64) -> Option<i64>,
    ) -> Result<Vec<Schedule>> {
        self.write(|tx| {
            let rows: Vec<ScheduleRow> = rows(
                tx,
                "SELECT id, name, cron, target, next_run_at, created_at FROM schedules WHERE next_run_at <= ?",
                [now],
            )?;
            let mut due = Vec::new();
            let mut advance = tx.prepare_cached("UPDATE schedules SET next_run_at = ? WHERE id = ?")?;
            for row in rows {
                let s = row.into_schedule()?;
                let following = next(&s.cron, now).unwrap_or(i64::MAX);
                advance.execute(params![following, s.id])?;
                due.push(s);
            }
            Ok(due)
        })
        .await
    }
}

#[async_trait]
impl super::WorkflowStore for SqliteStore {
    async fn create_run(&self, run: NewRun, now: i64) -> Result<RunRecord> {
        let id = self
            .write(|tx| {
                let id: i64 = scalar(
                    tx,
                    w::CREATE_RUN,
                    params![
                        run.workflow,
                        run.version,
                        run.input,
                        run.deadline_at,
                        now,
                        now
                    ],
                )?
                .ok_or_else(|| StoreError::Corrupt("run insert returned no id".into()))?;
                let mut node = tx.prepare_cached(w::CREATE_NODE)?;
                for (name, module) in &run.nodes {
                    node.execute(params![id, name, module])?;
                }
                tx.prepare_cached(w::CREATE_RUN_EVENT)?.execute(params![
                    id,
                    w::run_created_event(&run),
                    now
                ])?;
                Ok(id)
            })
            .await?;
        self.notify([Notice::Run(id), Notice::RunRequest(id)]);
        Ok(w::created_run(id, run, now))
    }

    async fn get_run(&self, id: RunId) -> Result<Option<RunSnapshot>> {
        self.read(|tx| {
            let Some(run) = rows::<RunRow>(tx, &w::RUN_BY_ID, [id])?.pop() else {
                return Ok(None);
            };
            let nodes: Vec<NodeRow> = rows(tx, w::RUN_NODES, [id])?;
            let items: Vec<ItemRow> = if nodes.iter().any(NodeRow::fans_out) {
                rows(tx, w::RUNNING_ITEMS, [id])?
            } else {
                Vec::new()
            };
            w::snapshot(run, nodes, items).map(Some)
        })
    }

    async fn apply_run(
        &self,
        id: RunId,
        rev: i64,
        changes: RunChanges,
        now: i64,
    ) -> Result<Option<Vec<JobId>>> {
        let applied = self
            .write(|tx| {
                let (state, error, finished) = w::step_state(&changes, now);
                let n_events = changes.events.len() as i64;
                let last_seq: Option<i64> = scalar(
                    tx,
                    w::STEP_RUN,
                    params![now, n_events, state, error, finished, id, rev],
                )?;
                let Some(last_seq) = last_seq else {
                    return Ok(None);
                };
                let (inserted, notices) = insert_jobs_tx(tx, w::step_jobs(&changes), now)?;
                let ids: Vec<JobId> = inserted.iter().map(|(j, _)| j.id).collect();
                let mut stmt = tx.prepare_cached(&NODE_UPSERT)?;
                for nw in w::node_writes(&changes, &ids) {
                    let n = nw.node;
                    stmt.execute(params![
                        id,
                        n.name,
                        n.module,
                        n.state.as_str(),
                        nw.job_id,
                        n.items_total,
                        n.items_next,
                        n.items_done,
                        n.items_failed,
                        n.output,
                        n.error,
                        n.started_at,
                        n.finished_at
                    ])?;
                }
                let mut stmt = tx.prepare_cached(&ITEM_UPSERT)?;
                for (node, idx, state, input, job) in w::item_writes(&changes, &ids) {
                    stmt.execute(params![id, node, idx, state, input, job])?;
                }
                let mut stmt = tx.prepare_cached(&RUN_EVENT_INSERT)?;
                let first = last_seq - n_events + 1;
                for (i, e) in changes.events.iter().enumerate() {
                    stmt.execute(params![
                        id,
                        first + i as i64,
                        e.kind,
                        e.data.to_string(),
                        now
                    ])?;
                }
                Ok(Some((ids, notices)))
            })
            .await?;
        let Some((ids, mut notices)) = applied else {
            return Ok(None);
        };
        notices.push(Notice::Run(id));
        self.notify(notices);
        Ok(Some(ids))
    }

    async fn runs_to_advance(&self, now: i64) -> Result<Vec<RunId>> {
        self.read(|tx| column(tx, w::RUNS_TO_ADVANCE, [now]))
    }

    async fn active_runs(&self) -> Result<Vec<RunId>> {
        self.read(|tx| column(tx, w::ACTIVE_RUNS, []))
    }

    async fn pending_items(
        &self,
        run: RunId,
        node: &str,
        from: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>> {
        self.read(|tx| {
            query(tx, w::PENDING_ITEMS, params![run, node, from, limit], |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
                ))
            })
        })
    }

    async fn item_outputs(&self, run: RunId, node: &str) -> Result<Vec<Option<Vec<u8>>>> {
        self.read(|tx| column(tx, w::ITEM_OUTPUTS, params![run, node]))
    }

    async fn items(&self, run: RunId, node: &str) -> Result<Vec<(i64, NodeState, Option<JobId>)>> {
        let rows: Vec<(i64, String, Option<i64>)> = self.read(|tx| {
            query(tx, w::ITEMS, params![run, node], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
        })?;
        rows.into_iter()
            .map(|(i, s, j)| Ok((i, s.parse().map_err(StoreError::Corrupt)?, j)))
            .collect()
    }

    async fn request_run_cancel(&self, id: RunId, now: i64) -> Result<RunState> {
        let requested = self
            .write(|tx| {
                let state: Option<String> = scalar(tx, w::RUN_STATE, [id])?;
                if !w::cancel_decision(id, state)? {
                    return Ok(false);
                }
                tx.prepare_cached(w::REQUEST_CANCEL)?
                    .execute(params![now, id])?;
                Ok(true)
            })
            .await?;
        if !requested {
            return Ok(RunState::Cancelling);
        }
        self.notify([Notice::Run(id), Notice::RunRequest(id)]);
        Ok(RunState::Running)
    }

    async fn run_events(&self, id: RunId, after: i64, limit: u32) -> Result<Vec<RunEvent>> {
        let rows: Vec<RunEventRow> =
            self.read(|tx| rows(tx, w::RUN_EVENTS, params![id, after, i64::from(limit)]))?;
        rows.into_iter().map(RunEventRow::into_event).collect()
    }
}
