//! The Postgres backend: for production and for many nodes sharing one database. Claims with
//! `FOR UPDATE SKIP LOCKED`, so workers on any number of nodes never wait on each other's rows;
//! changes are announced with NOTIFY and every node LISTENs, so idle workers wake and live event
//! streams move across nodes.
//!
//! One file per area of the store's traits (`modules.rs`, `jobs.rs`, `queue.rs` with
//! `endings.rs`, `schedules.rs`, `workflows.rs`), each statement in a `.sql` file in the
//! area's folder. `notices.rs` is the relay that sends and listens for the notices, which the
//! process runs (the store starts no task); `vacuum.rs` is the queue's vacuum, which the
//! node's upkeep asks for; `settings.rs` is what a node knows of the jobs' settings.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Executor, PgPool, Postgres, Transaction};
use tokio::sync::broadcast;

use super::{Notice, Result, StoreError};

mod endings;
mod events;
mod jobs;
mod keys;
mod modules;
mod notice_codec;
mod notices;
mod queue;
mod schedules;
mod settings;
mod vacuum;
mod workflows;

/// Connections for the statements every job goes through: one for each task that writes them
/// (the submission group, a node's claims, its endings and the notices). A fifth caller
/// (another node in the same process, say) waits for one; these statements are short.
const HOT_CONNECTIONS: u32 = 4;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PgStore {
    pool: PgPool,
    /// Connections for the statements every job goes through (see `connect_schema`).
    hot: PgPool,
    notices: broadcast::Sender<Notice>,
    /// Rows this node took off the queue (and the claims) since its last vacuum of them.
    churn: AtomicU64,
    /// When claims next sweep the queue for deadlines passed and scheduled jobs come due (ms);
    /// see `queue::sweep`.
    next_sweep: AtomicI64,
    /// The NOTIFY channel: one per schema, so that installations sharing a database stay
    /// apart.
    channel: String,
    /// Where committed changes go to be sent to other processes, once the relay is taken
    /// ([`JobStore::relay`](crate::store::JobStore::relay)); unset, nothing is queued.
    outbound: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Notice>>,
    /// This store's claims whose jobs have not all ended.
    open_claims: std::sync::Mutex<queue::OpenClaims>,
    /// What this store knows of `job_settings`.
    settings: std::sync::Mutex<settings::KnownSettings>,
    /// The queues with limits, as last read (see `queue::LimitedQueues`).
    limited: std::sync::Mutex<queue::LimitedQueues>,
    /// When the last claim's rate-limited queues next have a token.
    next_token: super::queues::NextToken,
}

type Tx<'a> = Transaction<'a, Postgres>;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PgStore {
    pub async fn connect(url: &str) -> Result<PgStore> {
        PgStore::connect_schema(url, None).await
    }

    /// Connects, uses `schema` (created if missing) when given, and applies migrations.
    pub async fn connect_schema(url: &str, schema: Option<&str>) -> Result<PgStore> {
        if let Some(s) = schema
            && !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(StoreError::BadUrl {
                url: super::redacted_url(url),
                reason: format!("invalid schema name {s:?}"),
            });
        }
        let mut target: PgConnectOptions = url.parse().map_err(|e| StoreError::BadUrl {
            url: super::redacted_url(url),
            reason: format!("{e}"),
        })?;
        // Without an `sslmode`, TLS is used when the server offers it (libpq's `prefer`), but
        // not to this machine: over loopback or a Unix socket it protects nothing, and every
        // statement of every job would pay for sealing and opening its records on both sides.
        if !url.contains("sslmode=") && is_local(&target) {
            target = target.ssl_mode(sqlx::postgres::PgSslMode::Disable);
        }
        first_connection(&target).await?;
        let search_path = schema.map(|s| format!("SET search_path TO {s}"));
        let hot_search_path = search_path.clone();
        if let Some(s) = schema {
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(target.clone())
                .await?;
            admin
                .execute(AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {s}")))
                .await?;
            admin.close().await;
        }
        let options = PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(30))
            // sqlx pings a connection when it goes back to the pool (always) and again before
            // handing it out (this): one round trip more before every statement, on the path
            // of every submission, claim and completion. The ping on release already drops a
            // connection that broke; one that breaks while idle fails its next statement, which
            // is retried like any database error.
            .test_before_acquire(false)
            .after_connect(move |conn, _meta| {
                let set_path = search_path.clone();
                Box::pin(async move {
                    if let Some(sql) = set_path {
                        conn.execute(AssertSqlSafe(sql)).await?;
                    }
                    Ok(())
                })
            });
        let pool = options
            .clone()
            .max_connections(16)
            .connect_with(target.clone())
            .await?;
        // The statements every job goes through (the submission groups' inserts, the claims,
        // the endings, the notices) have a pool of their own, one connection for each of the
        // four tasks that write them: through the one pool, which hands out the idle
        // connection used least recently, they went round ~10 server processes, each of which
        // had to warm up (its caches, its mapping of the shared buffers).
        //
        // Their statements are planned once per connection (a generic plan), not at each
        // execution: the claim's plan (a walk over the queues with ready jobs, a scan per
        // queue, the fair order) costs the server more to make (~0.5 ms) than to run, and it
        // does not depend on the parameters (arrays and limits).
        let hot = options
            .after_connect(move |conn, _meta| {
                let set_path = hot_search_path.clone();
                Box::pin(async move {
                    if let Some(sql) = set_path {
                        conn.execute(AssertSqlSafe(sql)).await?;
                    }
                    conn.execute("SET plan_cache_mode = force_generic_plan")
                        .await?;
                    Ok(())
                })
            })
            .max_connections(HOT_CONNECTIONS)
            .connect_with(target)
            .await?;
        MIGRATOR.run(&pool).await?;
        let (notices, _) = broadcast::channel(4096);
        Ok(PgStore {
            pool,
            hot,
            notices,
            churn: AtomicU64::new(0),
            next_sweep: AtomicI64::new(0),
            channel: format!("wasmjobs_{}", schema.unwrap_or("public")),
            outbound: std::sync::OnceLock::new(),
            open_claims: std::sync::Mutex::default(),
            limited: std::sync::Mutex::default(),
            next_token: Default::default(),
            settings: std::sync::Mutex::default(),
        })
    }

    /// Announces committed changes: at once to this process's subscribers, and, through the
    /// relay when one runs, to every other process (whose echo the relay skips).
    fn notify(&self, notices: impl IntoIterator<Item = Notice>) {
        let outbound = self.outbound.get();
        for notice in notices {
            let _ = self.notices.send(notice);
            if let Some(out) = outbound {
                // A stopped relay drops what comes after it: the process is stopping.
                let _ = out.send(notice);
            }
        }
    }

    /// The relay of this store's notices; `None` once it was taken.
    fn take_relay(&self) -> Option<Box<dyn crate::store::NoticeRelay>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.outbound.set(tx).ok()?;
        Some(Box::new(notices::PgRelay {
            pool: self.pool.clone(),
            hot: self.hot.clone(),
            channel: self.channel.clone(),
            origin: notice_codec::origin(),
            outbound: rx,
            forward: self.notices.clone(),
            listener: None,
        }))
    }

    /// Brings the next sweep of the queue forward to `at` at the latest.
    fn sweep_by(&self, at: i64) {
        self.next_sweep.fetch_min(at, Ordering::Relaxed);
    }
}

/// Whether `target` is this machine: a loopback address, `localhost`, or a Unix socket.
fn is_local(target: &PgConnectOptions) -> bool {
    let host = target.get_host();
    host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// How long the first connection to the server may take before the store gives up on it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens one connection to `target` and closes it, so that a server that cannot be reached,
/// refuses the login or fails TLS is said at once and plainly ("cannot connect to host:port
/// (connection refused)"), not after the pool's acquire timeout. The reasons name no
/// statement, and the URL's password is never part of them.
async fn first_connection(target: &PgConnectOptions) -> Result<()> {
    use sqlx::Connection;
    let place = format!("{}:{}", target.get_host(), target.get_port());
    let unavailable =
        |reason: String| StoreError::Unavailable(format!("cannot connect to {place} ({reason})"));
    match tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect_with(target)).await {
        Err(_) => Err(unavailable(format!(
            "no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(sqlx::Error::Io(e))) => match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => Err(unavailable(format!("TLS: {tls}"))),
            None => Err(unavailable(e.to_string())),
        },
        Ok(Err(sqlx::Error::Protocol(e))) => Err(unavailable(format!(
            "what answers there does not speak Postgres: {e}"
        ))),
        Ok(Err(sqlx::Error::Tls(e))) => Err(unavailable(format!("TLS: {e}"))),
        Ok(Err(sqlx::Error::Database(e))) => Err(unavailable(e.message().to_string())),
        Ok(Err(e)) => Err(e.into()),
    }
}
