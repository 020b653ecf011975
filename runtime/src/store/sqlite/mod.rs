//! The SQLite backend: the embedded default. WAL mode; one writer connection (SQLite allows one
//! writer at a time, so writes queue in-process instead of spinning on SQLITE_BUSY) and a few
//! readers. Claims are one atomic `UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING`.
//!
//! Statements run with rusqlite on the calling task's thread, a whole transaction per lock of
//! the writer (decision 005). SQLite's work per statement is a few microseconds; handing each
//! statement to a connection thread and back (as sqlx's SQLite driver does) cost 60–80 µs,
//! most of a chained workflow step. sqlx applies the migration (`_sqlx_migrations`).
//!
//! One file per area of the store's traits (`modules.rs`, `jobs.rs`, `queue.rs`,
//! `schedules.rs`, `workflows.rs`), each statement in a `.sql` file in the area's folder.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use sqlx::ConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tokio::sync::broadcast;

use super::rows::FromSqlite;
use super::{Notice, Result, StoreError};

mod events;
mod jobs;
mod keys;
mod modules;
mod queue;
mod schedules;
mod workflows;

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
    /// When the last claim's rate-limited queues next have a token.
    next_token: crate::store::queues::NextToken,
}

type Tx<'a> = rusqlite::Transaction<'a>;

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
            next_token: Default::default(),
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
