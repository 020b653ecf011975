//! The Postgres backend: for production and for many nodes sharing one database. Claims with
//! `FOR UPDATE SKIP LOCKED`, so workers on any number of nodes never wait on each other's rows;
//! changes are announced with NOTIFY and every node LISTENs, so idle workers wake and live event
//! streams move across nodes.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{AssertSqlSafe, Executor, FromRow, PgPool, Postgres, Row, Transaction};
use tokio::sync::broadcast;

use super::history;
use super::model::*;
use super::rows::*;
use super::{Notice, Rescue, Result, Store, StoreError};

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
    churn: Arc<AtomicU64>,
    /// When claims next sweep the queue for deadlines passed and scheduled jobs come due (ms);
    /// see [`PgStore::sweep`].
    next_sweep: AtomicI64,
    /// Notices of committed changes, for [`send_notices`].
    notifier: tokio::sync::mpsc::UnboundedSender<Notice>,
    /// This store's claims whose jobs have not all ended.
    open_claims: std::sync::Mutex<OpenClaims>,
    /// What this store knows of `job_settings`.
    settings: std::sync::Mutex<KnownSettings>,
    /// Cancelled when the store is dropped: its listener and its queue vacuum stop with it
    /// (the notice sender stops when its channel closes).
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What a store knows of `job_settings` (decision 009): the limits and grants of
/// the settings its claims met (a key names its texts forever, so they never go stale), and when
/// it last made sure that the settings it submitted with stay ([`touch_settings`]).
#[derive(Default)]
struct KnownSettings {
    texts: std::collections::HashMap<Vec<u8>, (String, String)>,
    touched: std::collections::HashMap<Vec<u8>, i64>,
}

impl KnownSettings {
    /// Past this many settings a map starts again: a node meets a handful, unless someone
    /// submits ever new ones.
    const MOST: usize = 4096;

    /// The keys of `settings` this store did not touch in the last [`TOUCH_EVERY_MS`]: the
    /// caller touches them before it submits, then records them with [`Self::touched`].
    fn untouched(&self, settings: &[Settings], now: i64) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        for p in settings {
            let fresh = self
                .touched
                .get(&p.key[..])
                .is_some_and(|&at| now.saturating_sub(at) < TOUCH_EVERY_MS);
            if !fresh {
                keys.push(p.key.to_vec());
            }
        }
        keys
    }

    /// Gives the claimed jobs that take their limits and grants from settings this store
    /// knows the texts of; returns the others' settings keys and ids.
    fn fill(&self, rows: &mut [ClaimRow]) -> Vec<(Vec<u8>, i64)> {
        let mut missing = Vec::new();
        for row in rows.iter_mut() {
            let found = match row.wants_settings() {
                None => continue,
                Some(key) => self.texts.get(key),
            };
            match found {
                Some((limits, grants)) => row.fill_settings(limits, grants),
                None => missing.extend(row.wants_settings().map(|k| (k.to_vec(), row.id()))),
            }
        }
        missing
    }

    fn touched(&mut self, keys: Vec<Vec<u8>>, now: i64) {
        if self.touched.len() + keys.len() > Self::MOST {
            self.touched.clear();
        }
        for key in keys {
            self.touched.insert(key, now);
        }
    }
}

/// A submission makes sure that the settings it uses are marked used in the last this many
/// milliseconds (touching them when they are not), so that retention, which deletes only
/// settings unused for [`SETTINGS_GRACE_MS`] past the retention age, cannot delete them while
/// a submission that relies on them is in flight. A store that touched settings itself skips
/// the check for as long, so the mark is at most twice this old when the store relies on it.
const TOUCH_EVERY_MS: i64 = 10 * 60 * 1000;

use super::settings::{SETTINGS_GRACE_MS, Settings, settings_not_stored};

/// Marks the settings of `keys` used at `now` where their mark is older than
/// [`TOUCH_EVERY_MS`] (which locks them only then). Settings that are not stored stay so: the
/// submission that follows stores them.
async fn touch_settings<'c, E>(exec: E, keys: &[Vec<u8>], now: i64) -> Result<()>
where
    E: Executor<'c, Database = Postgres>,
{
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE job_settings SET used_at = $2 WHERE key = ANY($1) AND used_at < $2 - $3")
        .bind(keys)
        .bind(now)
        .bind(TOUCH_EVERY_MS)
        .execute(exec)
        .await?;
    Ok(())
}

/// The claims a store made whose jobs have not all ended yet, so that a claim's row is deleted
/// by the next claim statement once its last job ended, and `claims` holds little more than
/// what runs: the running set is read through it (the rescuer, listing running jobs). The rows
/// of a node that died, or stopped before its jobs ended, are the rescuer's to delete.
#[derive(Default)]
struct OpenClaims {
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
    fn ended(&mut self, id: JobId) {
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

/// An insert given no module names to check can only store its jobs or fail: were it to
/// answer "names moved", something is wrong with the statement.
fn refused_without_names() -> StoreError {
    StoreError::Corrupt("an insert with no names to check was refused".into())
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends the notices of committed changes, as many as have queued up, with one statement.
///
/// Postgres serializes the commits of all transactions that NOTIFY, across every session of the
/// server: each holds a global lock from its NOTIFY until after its commit, WAL flush included
/// (`Lock:object` in `pg_stat_activity`). When submissions, claims and completions each
/// notified inside their own transactions, they queued up behind one another's flushes. Here
/// the notices leave the writing transactions: one small transaction sends a batch of them, and
/// commits without waiting for its flush (a notice is a wake-up, not data: one lost in a
/// server crash is covered by the pollers, as when the listener reconnects).
async fn send_notices(
    pool: PgPool,
    channel: String,
    origin: String,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Notice>,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 4096).await > 0 {
        let mut available = false;
        batch.retain(|n| {
            !matches!(n, Notice::JobsAvailable) || !std::mem::replace(&mut available, true)
        });
        let parts = super::notice_codec::encode(&origin, batch.drain(..));
        if let Err(e) = sqlx::query(
            "SELECT pg_notify($1, p), set_config('synchronous_commit', 'off', TRUE) FROM UNNEST($2::text[]) AS p",
        )
        .bind(&channel)
        .bind(&parts)
        .execute(&pool)
        .await
        {
            crate::throttle::warn(format!("cannot NOTIFY: {e}"));
        }
    }
}

/// Dead queue rows that make a vacuum of the queue worth its cost: the claim walks the dead
/// entries at the front of the queue's index, ~200 to a page, until a vacuum removes them.
const VACUUM_AFTER_ROWS: u64 = 2000;

/// The longest a node goes between two sweeps of the queue ([`PgStore::sweep`]).
const SWEEP_AT_LEAST_EVERY_MS: i64 = 1000;

/// Keeps the queue's tables vacuumed. A claim finds the next job by walking `job_queue_claim`
/// from its front, and every job claimed leaves a dead entry there until a vacuum removes it:
/// after 55,000 jobs with autovacuum off, a claim read 250 index pages (2.9 ms) to find none,
/// and at 500 jobs/s that cost a core. Autovacuum's defaults wait up to a minute, by which
/// time a busy node has left hundreds of thousands. The tables are narrow (a job id, its order
/// and its deadline), so the vacuum is cheap: it runs once this node has removed
/// [`VACUUM_AFTER_ROWS`] rows since the last one, and never takes more than a tenth of the
/// time (`SKIP_LOCKED`: a vacuum that another node runs is not waited for). It never truncates
/// the tables (`TRUNCATE FALSE`, and `vacuum_truncate` off for autovacuum): truncating takes an
/// exclusive lock, and every claim and submission queued up behind it (a 12 s stall in the
/// benchmark).
async fn vacuum_queue(
    pool: PgPool,
    churn: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut warned = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if pool.is_closed() {
            return;
        }
        if churn.load(Ordering::Relaxed) < VACUUM_AFTER_ROWS {
            continue;
        }
        churn.store(0, Ordering::Relaxed);
        let started = std::time::Instant::now();
        match pool
            .execute("VACUUM (SKIP_LOCKED, TRUNCATE FALSE) job_queue, claims")
            .await
        {
            Ok(_) => tokio::time::sleep(started.elapsed() * 9).await,
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(
                    "cannot vacuum the job queue ({e}); claims slow down as dead rows pile up \
                     unless autovacuum keeps up"
                );
            }
            Err(_) => {}
        }
    }
}

type Tx<'a> = Transaction<'a, Postgres>;

/// The `SET` item of an `UPDATE jobs` that appends an event to the job's history: the SQL
/// expressions of its seq, its time and the rest of its line ([`history::tail`]).
fn append_row_event(seq: &str, at: &str, tail: &str) -> String {
    format!(
        "history = history || '{{\"seq\":' || ({seq}) || ',\"at\":' || ({at}) || ',' || ({tail}) || chr(10)"
    )
}

/// The time of a node's transition of a job (`now`, the node's clock reading, an SQL
/// expression), but never before the job's last one: the reading may be a little behind the
/// time another task or node stored the job with, and a job's attempts and history must read
/// forward in time. For an `UPDATE jobs`, whose `jobs.updated_at` is the row's before it.
fn not_before_last(now: &str) -> String {
    format!("GREATEST({now}, jobs.updated_at)")
}

/// Columns of keyless jobs inserted with one `INSERT … SELECT FROM UNNEST`, and each one's
/// first event, borrowed from the jobs and from [`Texts`].
#[derive(Default)]
struct KeylessColumns<'a> {
    module: Vec<&'a str>,
    state: Vec<&'static str>,
    priority: Vec<i64>,
    run_at: Vec<i64>,
    input: Vec<&'a [u8]>,
    settings: Vec<&'a [u8]>,
    deadline_at: Vec<Option<i64>>,
    workflow_ref: Vec<Option<&'a str>>,
    input_from: Vec<Option<i64>>,
    event: Vec<&'a str>,
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

/// Claims queued jobs in claim order: takes them off the queue (those whose deadline passed
/// stay for the sweep), marks them running (with their attempt's start: the attempt is written
/// when it ends) and appends their `running` events to their rows (the event data as
/// `rows::claimed` makes it), records the claim (`claims`: how the rescuer finds running jobs),
/// deletes this store's claims whose jobs have all ended ([`OpenClaims`]) and lets the
/// transaction commit without waiting for the WAL flush. The `jobs` update changes
/// no indexed column, so it is HOT. The queue rows are chosen and locked first
/// (`= ANY(ARRAY(…))`), then taken by `ctid` (the queue has no key); a queue row
/// whose job is no longer queued is taken and dropped.
static CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let at = not_before_last("$3");
    format!(
        "WITH q AS (
             DELETE FROM job_queue
             WHERE ctid = ANY(ARRAY(SELECT ctid FROM job_queue
                                    WHERE ready AND (deadline_at IS NULL OR deadline_at > $3)
                                    ORDER BY priority DESC, run_at, job_id LIMIT $4 FOR UPDATE SKIP LOCKED))
             RETURNING job_id
         ), c AS (
             UPDATE jobs SET state = 'running', worker = $1, lease_until = $2, attempts = attempts + 1,
                    attempt_started_at = {at}, updated_at = {at}, event_seq = event_seq + 1,
                    {append}
             FROM q WHERE jobs.id = q.job_id AND jobs.state = 'queued'
             RETURNING {columns}
         ), k AS (
             INSERT INTO claims (worker, job_ids, at) SELECT $1, array_agg(id), $3 FROM c HAVING count(*) > 0
             RETURNING id
         ), d AS (
             DELETE FROM claims WHERE id = ANY($5)
         )
         SELECT c.*, (SELECT id FROM k) AS claim_id,
                set_config('synchronous_commit', 'off', TRUE) AS synchronous_commit
         FROM c",
        columns = claim_columns(false),
        append = append_row_event(
            "event_seq + 1",
            &at,
            // As `history::tail` writes the `running` event (serde_json's object: keys in
            // order, no spaces), by concatenation: `json_build_object` costs the server ~1 µs
            // a job more. `$6` is the worker as a JSON string.
            "'\"kind\":\"state\",\"data\":{\"attempt\":' || (attempts + 1) || ',\"state\":\"running\",\"worker\":' || $6::text || '}}'"
        )
    )
});

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
        self.state_event
            .push(history::tail_text("state", &e.state_data));
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

/// The statement of [`write_endings`].
static ENDINGS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let at = not_before_last("$12");
    format!(
        "WITH v AS (
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                                  $7::bytea[], $8::bigint[], $9::bigint[], $10::bigint[], $11::text[],
                                  $17::text[])
                  AS u(id, attempt, worker, state, outcome, error, output, run_at, finished_at, n,
                       attempt_head, state_event)
         ), j AS (
             UPDATE jobs SET state = v.state, outcome = v.outcome, error = v.error, output = v.output,
                    worker = NULL, lease_until = NULL, run_at = COALESCE(v.run_at, jobs.run_at),
                    finished_at = CASE WHEN v.finished_at IS NOT NULL THEN {at} END, updated_at = {at},
                    event_seq = jobs.event_seq + v.n,
                    lost_attempts = jobs.lost_attempts + (v.outcome = 'lost')::int,
                    {append},
                    ended_attempts = jobs.ended_attempts
                        || v.attempt_head || COALESCE(jobs.attempt_started_at, {at})
                        || ',\"finished_at\":' || {at} || '}}' || chr(10)
             FROM v
             WHERE jobs.id = v.id AND jobs.worker = v.worker AND jobs.attempts = v.attempt
             RETURNING jobs.id, jobs.event_seq, jobs.state, jobs.priority, jobs.run_at, jobs.deadline_at
         ), q AS (
             INSERT INTO job_queue (job_id, priority, run_at, deadline_at, ready)
             SELECT id, priority, run_at, deadline_at, state = 'queued' FROM j WHERE state IN ('queued', 'scheduled')
         ), e AS (
             INSERT INTO events (job_id, seq, kind, data, at)
             SELECT u.job_id, j.event_seq - u.back, u.kind, u.data, $12
             FROM UNNEST($13::bigint[], $14::bigint[], $15::text[], $16::text[]) AS u(job_id, back, kind, data)
             JOIN j ON j.id = u.job_id
         )
         SELECT j.id FROM j",
        append = append_row_event("jobs.event_seq + v.n", &at, "v.state_event")
    )
});

/// Writes attempt endings with one statement: each job still held by the ending's worker and
/// attempt gets its new state, with its state event and its ended attempt appended to its row
/// and goes back on the queue when it is to be retried; the attempt's own
/// events (logs) go to `events`, before the state event in seq.
/// Returns the ids of the jobs written (their notices: [`Endings::notices_of`]); the others
/// were fenced out.
///
/// The fence reads `worker` and `attempts`: a job has a worker exactly while it runs (the claim
/// sets it; every way out of `running` clears it).
async fn write_endings<'c, E>(exec: E, e: &Endings<'_>, now: i64) -> Result<Vec<i64>>
where
    E: Executor<'c, Database = Postgres>,
{
    Ok(sqlx::query_scalar(AssertSqlSafe(&**ENDINGS))
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
        .fetch_all(exec)
        .await?)
}

const DEADLINE_PASSED: &str = "the job's deadline passed before it could run";

/// Puts jobs a worker still holds at the given attempts back in the queue, their attempt not
/// charged, with their `queued` event ([`rows::released_event`](super::rows::released_event),
/// `$5`) appended to their rows: `$1` ids, `$2` attempts, `$3` now, `$4` the worker.
static RELEASE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let at = not_before_last("$3");
    format!(
        "WITH v AS (
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[]) AS u(id, attempt)
         ), r AS (
             UPDATE jobs SET state = 'queued', worker = NULL, lease_until = NULL,
                    attempts = jobs.attempts - 1, attempt_started_at = NULL, updated_at = {at},
                    event_seq = jobs.event_seq + 1, {append}
             FROM v
             WHERE jobs.id = v.id AND jobs.state = 'running' AND jobs.worker = $4
                   AND jobs.attempts = v.attempt
             RETURNING jobs.id, jobs.priority, jobs.run_at, jobs.deadline_at
         ), q AS (
             INSERT INTO job_queue (job_id, priority, run_at, deadline_at, ready)
             SELECT id, priority, run_at, deadline_at, TRUE FROM r
         )
         SELECT id FROM r",
        append = append_row_event("jobs.event_seq + 1", &at, "$5")
    )
});

impl PgStore {
    /// Gives the claimed jobs that take their limits and grants from their settings
    /// the texts: from what this store knows, else read (once per settings and node).
    async fn take_settings(&self, rows: &mut [ClaimRow]) -> Result<()> {
        let mut missing = lock(&self.settings).fill(rows);
        if missing.is_empty() {
            return Ok(());
        }
        let mut keys: Vec<Vec<u8>> = missing.into_iter().map(|(key, _)| key).collect();
        keys.sort_unstable();
        keys.dedup();
        let read: Vec<(Vec<u8>, String, String)> =
            sqlx::query_as("SELECT key, limits, grants FROM job_settings WHERE key = ANY($1)")
                .bind(&keys)
                .fetch_all(&self.pool)
                .await?;
        let mut known = lock(&self.settings);
        if known.texts.len() + read.len() > KnownSettings::MOST {
            known.texts.clear();
        }
        known
            .texts
            .extend(read.into_iter().map(|(key, l, g)| (key, (l, g))));
        missing = known.fill(rows);
        match missing.first() {
            None => Ok(()),
            Some(&(_, id)) => Err(settings_not_stored(id)),
        }
    }

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
        let options = PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(30))
            // sqlx pings a connection when it goes back to the pool (always) and again before
            // handing it out (this): one round trip more before every statement, on the path
            // of every submission, claim and completion. The ping on release already drops a
            // connection that broke; one that breaks while idle fails its next statement, which
            // is retried like any database error.
            .test_before_acquire(false)
            .after_connect(move |conn, _meta| {
                let set_path = set_path.clone();
                Box::pin(async move {
                    if let Some(sql) = set_path {
                        conn.execute(AssertSqlSafe(sql)).await?;
                    }
                    // Every statement of the store finds its rows through an index. The
                    // planner's statistics lag behind queue tables that grow by thousands of
                    // rows a second (more so with autovacuum off), and a plan cached while a
                    // table was small stays cached: a completion once joined `attempts` by a
                    // full scan, 24.7 M rows read in a 50,000-job run. A statement with no
                    // index to use still scans; this only makes the planner prefer the index.
                    // JIT goes off with it: the store's statements are small, and the penalty
                    // that steers the planner away from scans crosses JIT's cost threshold
                    // (one lookup took 175 ms to compile).
                    conn.execute(
                        "SET enable_seqscan = off; SET enable_bitmapscan = off; SET jit = off",
                    )
                    .await?;
                    Ok(())
                })
            });
        let pool = options.clone().max_connections(16).connect(url).await?;
        // The statements every job goes through (the submission groups' inserts, the claims,
        // the endings, the notices) have a pool of their own, one connection for each of the
        // four tasks that write them. Through the one pool, which hands out the idle connection
        // used least recently, they went round ~10 server processes, and each had to warm up
        // (its caches, its mapping of the shared buffers): a fresh node runs its first 50,000
        // jobs ~10 % faster batched, ~13 % one by one, on its own four. Once the processes are
        // warm it makes no difference.
        let hot = options
            .max_connections(HOT_CONNECTIONS)
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        // The NOTIFY channel: one per schema, so that installations sharing a database stay
        // apart.
        let channel = format!("wasmjobs_{}", schema.unwrap_or("public"));
        let (notices, _) = broadcast::channel(4096);
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(&channel).await?;
        let forward = notices.clone();
        // Marks this store's notices, so that its listener skips their echo.
        let origin = super::notice_codec::origin();
        let own = origin.clone();
        let stop = tokio_util::sync::CancellationToken::new();
        let listening = stop.clone();
        tokio::spawn(async move {
            loop {
                let heard = tokio::select! {
                    _ = listening.cancelled() => return,
                    heard = listener.recv() => heard,
                };
                match heard {
                    Ok(n) => {
                        // This store's own notices were delivered when they were sent.
                        for notice in super::notice_codec::decode(n.payload(), &origin) {
                            let _ = forward.send(notice);
                        }
                    }
                    Err(e) => {
                        // PgListener reconnects by itself on the next recv; wake everyone so
                        // nothing waits on a notice lost in between.
                        crate::throttle::warn(format!("postgres listener: {e}"));
                        let _ = forward.send(Notice::JobsAvailable);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        let churn = Arc::new(AtomicU64::new(0));
        tokio::spawn(vacuum_queue(pool.clone(), churn.clone(), stop.clone()));
        let (notifier, pending) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(send_notices(hot.clone(), channel, own, pending));
        Ok(PgStore {
            pool,
            hot,
            notices,
            churn,
            next_sweep: AtomicI64::new(0),
            notifier,
            open_claims: std::sync::Mutex::default(),
            settings: std::sync::Mutex::default(),
            stop,
        })
    }

    async fn announce(&self, notices: Vec<Notice>) {
        self.notify(notices);
    }

    /// Ends jobs whose attempts' outcomes decided their end (`retry::decided_by_outcome`)
    /// without reading their rows first: one statement, its own transaction, fenced in its
    /// `WHERE` (see [`write_endings`]).
    async fn complete_settled(
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
        let written = write_endings(&self.hot, &endings, now).await?;
        for id in &written {
            if let Some((i, state)) = states.get(id) {
                results[*i] = Completed::Applied(*state);
            }
        }
        self.notify(endings.notices_of(&written));
        Ok(())
    }

    /// Ends jobs whose attempts' ends depend on the job (retry policy, deadline, cancel
    /// request): reads and locks their rows, decides, then writes with [`write_endings`] in
    /// the same transaction. With `expired_before` (the rescuer), only attempts whose lease
    /// ran out before it are ended: a lease renewed since the rescuer looked is left alone.
    async fn complete_read(
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
        }
        // Rows are locked in id order (the heartbeat skips rows held by others).
        let snaps: Vec<Snap> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT id, state, attempts, worker, {RETRY_COLUMN}, cancel_requested, deadline_at, lease_until,
                    lost_attempts FROM jobs
             WHERE id = ANY($1) ORDER BY id FOR UPDATE"
        )))
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
            endings.push(c, ending);
        }
        // The rows are locked and fenced above: every one of them is written.
        let written = if endings.id.is_empty() {
            Vec::new()
        } else {
            endings.sweep_by(self);
            write_endings(&mut *tx, &endings, now).await?
        };
        tx.commit().await?;
        self.notify(endings.notices_of(&written));
        Ok(())
    }

    /// In a transaction of its own: fails the waiting jobs whose overall deadline passed and
    /// queues the scheduled jobs that came due; returns the notices to send. Then notes when
    /// the next sweep may find something: the earliest deadline or scheduled time left, and no
    /// later than [`SWEEP_AT_LEAST_EVERY_MS`] from now (for jobs other nodes add).
    ///
    /// Claims sweep only when that time has come. Sweeping before every claim cost about as
    /// much as the claim itself: the statement is planned on every call (0.27 ms here, a fifth
    /// of the server's statement time in the benchmark) and nearly always finds nothing. A
    /// claim never starts a job whose deadline passed, swept or not; this node's own scheduled
    /// jobs, retries and deadlines bring the next sweep forward (`sweep_by`), and so does the
    /// dispatcher's look at the next scheduled job (`next_scheduled_at`), which sees every
    /// node's.
    async fn sweep(&self, now: i64) -> Result<Vec<Notice>> {
        self.next_sweep
            .store(now + SWEEP_AT_LEAST_EVERY_MS, Ordering::Relaxed);
        let at = not_before_last("$2");
        let swept: Vec<(i64, bool)> = sqlx::query_as(AssertSqlSafe(format!(
            "WITH expired_q AS (
                 DELETE FROM job_queue
                 WHERE ctid = ANY(ARRAY(SELECT ctid FROM job_queue
                                        WHERE deadline_at IS NOT NULL AND deadline_at <= $2
                                        FOR UPDATE SKIP LOCKED))
                 RETURNING job_id
             ), expired AS (
                 UPDATE jobs SET state = 'failed', error = $1, finished_at = {at}, updated_at = {at},
                        event_seq = event_seq + 1, {failed}
                 FROM expired_q WHERE jobs.id = expired_q.job_id AND jobs.state IN ('queued', 'scheduled')
                 RETURNING id
             ), due_q AS (
                 UPDATE job_queue SET ready = TRUE
                 WHERE ctid = ANY(ARRAY(SELECT ctid FROM job_queue
                                        WHERE NOT ready AND run_at <= $2
                                              AND (deadline_at IS NULL OR deadline_at > $2)
                                        FOR UPDATE SKIP LOCKED))
                 RETURNING job_id
             ), due AS (
                 UPDATE jobs SET state = 'queued', updated_at = {at}, event_seq = event_seq + 1, {queued}
                 FROM due_q WHERE jobs.id = due_q.job_id AND jobs.state = 'scheduled'
                 RETURNING id
             )
             SELECT id, TRUE FROM expired UNION ALL SELECT id, FALSE FROM due",
            failed = append_row_event("event_seq + 1", &at, "$3"),
            queued = append_row_event("event_seq + 1", &at, "$4"),
        )))
        .bind(DEADLINE_PASSED)
        .bind(now)
        .bind(history::tail(&NewEvent::state(
            JobState::Failed,
            json!({ "error": DEADLINE_PASSED }),
        )))
        .bind(history::tail(&NewEvent::state(JobState::Queued, json!({}))))
        .fetch_all(&self.pool)
        .await?;
        self.churn.fetch_add(swept.len() as u64, Ordering::Relaxed);
        let mut notices = Vec::new();
        for (id, ended) in swept {
            notices.push(Notice::Events(id));
            if ended {
                notices.push(Notice::Ended(id));
            }
        }
        let next: std::result::Result<Option<i64>, _> = sqlx::query_scalar(
            "SELECT LEAST((SELECT MIN(run_at) FROM job_queue WHERE NOT ready),
                          (SELECT MIN(deadline_at) FROM job_queue WHERE deadline_at IS NOT NULL))",
        )
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

    /// Brings the next sweep forward to `at` at the latest.
    fn sweep_by(&self, at: i64) {
        self.next_sweep.fetch_min(at, Ordering::Relaxed);
    }

    /// Announces committed changes: at once to this node's subscribers, and to every other
    /// node through NOTIFY (whose echo this node's listener skips).
    fn notify(&self, notices: impl IntoIterator<Item = Notice>) {
        for notice in notices {
            let _ = self.notices.send(notice);
            // The sender lives as long as the store.
            let _ = self.notifier.send(notice);
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

/// Whether every `(name, digest)` of `$1` and `$2` still holds: the name points at the digest.
const NAMES_HOLD: &str =
    "NOT EXISTS (SELECT 1 FROM UNNEST($1::text[], $2::text[]) AS p(name, digest)
                   WHERE NOT EXISTS (SELECT 1 FROM module_names m
                                     WHERE m.name = p.name AND m.digest = p.digest))";

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
) -> Result<Option<Vec<i64>>>
where
    E: Executor<'c, Database = Postgres>,
{
    let mut cols = KeylessColumns::default();
    for ((j, state, run_at), &(settings, event)) in jobs.iter().zip(&texts.of) {
        cols.module.push(&j.module_digest);
        cols.state.push(state.as_str());
        cols.priority.push(j.priority);
        cols.run_at.push(*run_at);
        cols.input.push(&j.input);
        cols.settings.push(&texts.settings[settings].key);
        cols.deadline_at.push(j.deadline_at);
        cols.workflow_ref.push(j.workflow_ref.as_deref());
        cols.input_from.push(j.input_from);
        cols.event.push(&texts.events[event]);
    }
    let (name, digest): (Vec<&str>, Vec<&str>) =
        names.iter().map(|(n, d)| (n.as_str(), d.as_str())).unzip();
    let key: Vec<&[u8]> = texts.settings.iter().map(|p| &p.key[..]).collect();
    let limits: Vec<&str> = texts.settings.iter().map(|p| p.limits.as_str()).collect();
    let retry: Vec<&str> = texts.settings.iter().map(|p| p.retry.as_str()).collect();
    let grants: Vec<&str> = texts.settings.iter().map(|p| p.grants.as_str()).collect();
    let ids: Vec<i64> = sqlx::query_scalar(
        "WITH v AS MATERIALIZED (
             SELECT nextval('jobs_id_seq') AS id, u.*
             FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bytea[], $6::bytea[],
                         $7::bigint[], $8::text[], $9::bigint[], $10::text[])
                  WITH ORDINALITY AS u(module_digest, state, priority, run_at, input, settings,
                                       deadline_at, workflow_ref, input_from, event, ord)
             -- Once per statement: nothing at all when a name no longer points where it did.
             WHERE NOT EXISTS (SELECT 1 FROM UNNEST($12::text[], $13::text[]) AS p(name, digest)
                               WHERE NOT EXISTS (SELECT 1 FROM module_names m
                                                 WHERE m.name = p.name AND m.digest = p.digest))
         ), p AS (
             -- The settings not stored yet (those stored were touched first: retention keeps them).
             INSERT INTO job_settings (key, limits, retry, grants, used_at)
             SELECT k, l, r, g, $11
             FROM UNNEST($14::bytea[], $15::text[], $16::text[], $17::text[]) AS x(k, l, r, g)
             WHERE EXISTS (SELECT 1 FROM v)
             ON CONFLICT (key) DO NOTHING
         ), j AS (
             INSERT INTO jobs (id, module_digest, state, priority, run_at, input, settings,
                               deadline_at, workflow_ref, input_from, created_at, updated_at,
                               event_seq, history)
             SELECT id, module_digest, state, priority, run_at, input,
                    settings, deadline_at, workflow_ref, input_from, $11, $11, 1, event
             FROM v
             -- Once per statement: fails it when a job names a module that is not stored.
             WHERE (SELECT wasmjobs_modules_exist($1::text[]))
         ), q AS (
             INSERT INTO job_queue (job_id, priority, run_at, deadline_at, ready)
             SELECT id, priority, run_at, deadline_at, state = 'queued' FROM v
         )
         SELECT v.id FROM v ORDER BY v.ord",
    )
    .bind(&cols.module)
    .bind(&cols.state)
    .bind(&cols.priority)
    .bind(&cols.run_at)
    .bind(&cols.input)
    .bind(&cols.settings)
    .bind(&cols.deadline_at)
    .bind(&cols.workflow_ref)
    .bind(&cols.input_from)
    .bind(&cols.event)
    .bind(now)
    .bind(&name)
    .bind(&digest)
    .bind(&key)
    .bind(&limits)
    .bind(&retry)
    .bind(&grants)
    .fetch_all(exec)
    .await?;
    if ids.is_empty() && !jobs.is_empty() && !names.is_empty() {
        return Ok(None);
    }
    if ids.len() != jobs.len() {
        return Err(StoreError::Corrupt(format!(
            "inserting {} jobs returned {} ids",
            jobs.len(),
            ids.len()
        )));
    }
    Ok(Some(ids))
}

/// Inserts jobs and their first events inside `tx`; returns them and the notices to send once
/// `tx` commits. Used by job submission and by the workflow engine's steps. A new job has no
/// followers yet (its id is not known before this commits), so its creation announces only
/// that jobs are available.
async fn insert_jobs_tx(tx: &mut Tx<'_>, jobs: Vec<NewJob>, now: i64) -> Result<Inserted> {
    let mut out: Vec<Option<(Job, bool)>> = Vec::with_capacity(jobs.len());
    let mut any_queued = false;
    // Jobs with an idempotency key one at a time (a key may repeat, even within the batch);
    // the others with one statement.
    let mut keyless: Vec<(usize, NewJob, JobState, i64)> = Vec::new();
    for j in jobs {
        let (state, run_at) = initial_state(&j, now);
        let Some(key) = j.idempotency_key.clone() else {
            any_queued |= state == JobState::Queued;
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
        let settings = Settings::of(&j);
        touch_settings(&mut **tx, &[settings.key.to_vec()], now).await?;
        let id: i64 = sqlx::query_scalar(
            "WITH s AS (
                 INSERT INTO job_settings (key, limits, retry, grants, used_at)
                 VALUES ($6, $7, $8, $9, $13)
                 ON CONFLICT (key) DO NOTHING
             ), j AS (
                 INSERT INTO jobs (module_digest, state, priority, run_at, input, settings,
                                   idempotency_key, deadline_at, workflow_ref, input_from, created_at,
                                   updated_at, event_seq, history)
                 SELECT $1, $2, $3, $4, $5, $6, $10, $11, $12, $14, $13, $13, 1, $15
                 WHERE wasmjobs_modules_exist(ARRAY[$1::text])
                 RETURNING id, priority, run_at, deadline_at, state
             ), q AS (
                 INSERT INTO job_queue (job_id, priority, run_at, deadline_at, ready)
                 SELECT id, priority, run_at, deadline_at, state = 'queued' FROM j
             )
             SELECT id FROM j",
        )
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
        .fetch_one(&mut **tx)
        .await?;
        any_queued |= state == JobState::Queued;
        out.push(Some((Job::inserted(id, j, state, run_at, now), true)));
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
        let ids = insert_keyless(&mut **tx, &batch, &texts, &[], now)
            .await?
            .ok_or_else(refused_without_names)?;
        for ((id, slot), (j, state, run_at)) in ids.into_iter().zip(slots).zip(batch) {
            out[slot] = Some((Job::inserted(id, j, state, run_at, now), true));
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

/// Takes job `id` off the queue, if it is there. The queue has no key: its row
/// is found through the index that holds it, by the job's priority and run_at (a waiting job's
/// row is in `job_queue_waiting`, a ready one's in `job_queue_claim`). A row this misses (the
/// job was requeued after this statement's snapshot) is harmless: whoever takes it checks the
/// job's state.
async fn unqueue(tx: &mut Tx<'_>, id: JobId) -> Result<()> {
    sqlx::query(
        "WITH j AS (
             SELECT priority, run_at FROM jobs WHERE id = $1
         ), ready AS (
             DELETE FROM job_queue q USING j
             WHERE q.ready AND q.priority = j.priority AND q.run_at = j.run_at AND q.job_id = $1
         )
         DELETE FROM job_queue q USING j WHERE NOT q.ready AND q.run_at = j.run_at AND q.job_id = $1",
    )
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
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
            let set = sqlx::query(
                "INSERT INTO module_names (name, digest, owner, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET digest = excluded.digest, owner = excluded.owner, updated_at = excluded.updated_at
                 WHERE module_names.digest <> excluded.digest AND ($5 OR module_names.owner = excluded.owner)",
            )
            .bind(name)
            .bind(&m.digest)
            .bind(&m.owner)
            .bind(now)
            .bind(m.may_move)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if set == 0 {
                let current: Option<String> =
                    sqlx::query_scalar("SELECT digest FROM module_names WHERE name = $1")
                        .bind(name)
                        .fetch_optional(&mut *tx)
                        .await?;
                if current.as_deref() != Some(m.digest.as_str()) {
                    return Err(StoreError::name_taken(name));
                }
            }
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
            let Some(ids) = insert_keyless(&self.hot, &batch, &texts, names, now).await? else {
                return Ok(None);
            };
            if batch.iter().any(|(_, state, _)| *state == JobState::Queued) {
                self.notify([Notice::JobsAvailable]);
            }
            ids.into_iter()
                .zip(batch)
                .map(|(id, (j, state, run_at))| (Job::inserted(id, j, state, run_at, now), true))
                .collect()
        } else {
            let mut tx = self.pool.begin().await?;
            if !names.is_empty() {
                let (n, d): (Vec<&str>, Vec<&str>) =
                    names.iter().map(|(n, d)| (n.as_str(), d.as_str())).unzip();
                let hold: bool = sqlx::query_scalar(AssertSqlSafe(format!("SELECT {NAMES_HOLD}")))
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
        let out: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT output FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(out.flatten())
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
        let row: Option<(String, String, i64, Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT ended_attempts, state, attempts, worker, attempt_started_at FROM jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some((ended, state, attempts, worker, started)) = row else {
            return Ok(Vec::new());
        };
        Ok(attempts_of(id, &ended, &state, attempts, worker, started)?)
    }

    async fn list_jobs(&self, f: &JobFilter) -> Result<Vec<Job>> {
        // No index of `jobs` reads the state: jobs that wait or run are found
        // through the queue and the claims, newest first; finished ones by walking `jobs`
        // from the newest, keeping those in the state asked for.
        let source = match f.state {
            Some(JobState::Queued | JobState::Scheduled) => {
                "(SELECT job_id FROM job_queue) s JOIN jobs ON jobs.id = s.job_id"
            }
            Some(JobState::Running) => {
                "(SELECT DISTINCT u.id AS job_id FROM claims CROSS JOIN LATERAL unnest(claims.job_ids) AS u(id)) s
                 JOIN jobs ON jobs.id = s.job_id"
            }
            _ => "jobs",
        };
        let order = if source == "jobs" {
            "jobs.id"
        } else {
            "s.job_id"
        };
        let rows: Vec<JobRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM {source}
             WHERE ($1::text IS NULL OR state = $2) AND ($3::text IS NULL OR module_digest = $4)
                   AND ($5::bigint IS NULL OR {order} < $6)
             ORDER BY {order} DESC LIMIT $7"
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
        // The state events in the job's history, and the others (logs, progress, cancel
        // requests) in `events`, merged by seq.
        let history: Option<String> = sqlx::query_scalar("SELECT history FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT job_id, seq, kind, data, at FROM events WHERE job_id = $1 AND seq > $2
             ORDER BY seq LIMIT $3",
        )
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

    async fn claim(
        &self,
        worker: &str,
        limit: u32,
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<Claimed>> {
        // First, when it may find something, the sweep (see `sweep`).
        let mut notices = Vec::new();
        if now >= self.next_sweep.load(Ordering::Relaxed) {
            notices = self.sweep(now).await?;
        }
        // Then the claim, with its attempts and `running` events, in one statement (one round
        // trip). It ends no job, so it need not wait for its WAL flush: were Postgres to lose
        // it in a crash, its jobs would be queued again, and the completion of any of them (a
        // synchronous commit, later in the WAL) flushes it first.
        let done = std::mem::take(&mut lock(&self.open_claims).done);
        let result = sqlx::query(AssertSqlSafe(&**CLAIM))
            .bind(worker)
            .bind(now + lease_ms)
            .bind(now)
            .bind(i64::from(limit))
            .bind(&done)
            .bind(serde_json::Value::from(worker).to_string())
            .fetch_all(&self.hot)
            .await;
        let rows = match result {
            Ok(rows) => rows,
            Err(e) => {
                lock(&self.open_claims).done.extend(done);
                return Err(e.into());
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
        let mut open = lock(&self.open_claims);
        for c in completions {
            open.ended(c.job_id);
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
        // Renews the leases of the rows no one else holds locked, and never waits: a row held
        // is being completed, cancelled or rescued, and the next renewal comes long before the
        // lease runs out. (Waiting instead deadlocked with completions, whose row order the
        // planner decides.) Every job of `jobs` this worker still runs is reported held.
        // A lease is renewed once half of it is spent, not at every beat: a node holding a few
        // hundred short jobs otherwise rewrote each of their rows four times a second.
        let rows: Vec<(i64, bool)> = sqlx::query_as(
            "WITH renewed AS (
                 UPDATE jobs SET lease_until = $1
                 WHERE id IN (SELECT id FROM jobs
                              WHERE id = ANY($3) AND state = 'running' AND worker = $2 AND lease_until < $4
                              FOR UPDATE SKIP LOCKED)
             )
             SELECT id, cancel_requested FROM jobs WHERE id = ANY($3) AND state = 'running' AND worker = $2",
        )
        .bind(now + lease_ms)
        .bind(worker)
        .bind(jobs)
        .bind(now + lease_ms / 2)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn rescue(&self, which: Rescue<'_>, now: i64) -> Result<Vec<JobId>> {
        // Claims whose jobs have all left `running` under their worker are done with: none of
        // their jobs can come back to them (a job claimed again is in a claim of its own).
        let done = sqlx::query(
            "DELETE FROM claims c
             WHERE NOT EXISTS (SELECT 1 FROM unnest(c.job_ids) AS u(id) JOIN jobs j ON j.id = u.id
                               WHERE j.state = 'running' AND j.worker = c.worker)",
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        self.churn.fetch_add(done, Ordering::Relaxed);
        // Attempts whose lease ran out (or whose worker is gone) end `lost`, decided and
        // written as any other ending that depends on its job; an expired lease is checked
        // again under the row's lock.
        let (expired, expired_before): (Vec<(i64, i64, Option<String>)>, _) = match which {
            Rescue::Expired { keep } => (
                sqlx::query_as(
                    "SELECT DISTINCT j.id, j.attempts, j.worker
                     FROM claims c CROSS JOIN LATERAL unnest(c.job_ids) AS u(id) JOIN jobs j ON j.id = u.id
                     WHERE j.state = 'running' AND j.worker = c.worker AND j.lease_until < $1
                           AND j.id <> ALL($2)",
                )
                .bind(now)
                .bind(keep)
                .fetch_all(&self.pool)
                .await?,
                Some(now),
            ),
            Rescue::Workers(workers) => (
                sqlx::query_as(
                    "SELECT DISTINCT j.id, j.attempts, j.worker
                     FROM claims c CROSS JOIN LATERAL unnest(c.job_ids) AS u(id) JOIN jobs j ON j.id = u.id
                     WHERE c.worker = ANY($1) AND j.state = 'running' AND j.worker = c.worker",
                )
                .bind(workers)
                .fetch_all(&self.pool)
                .await?,
                None,
            ),
        };
        if expired.is_empty() {
            return Ok(Vec::new());
        }
        let lost: Vec<Completion> = expired
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
        Ok(sqlx::query_scalar("SELECT DISTINCT worker FROM claims")
            .fetch_all(&self.pool)
            .await?)
    }

    async fn release(&self, worker: &str, jobs: &[(JobId, u32)], now: i64) -> Result<Vec<JobId>> {
        let (ids, attempts): (Vec<i64>, Vec<i64>) =
            jobs.iter().map(|&(id, a)| (id, i64::from(a))).unzip();
        let released: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(&**RELEASE))
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
        sqlx::query(
            "INSERT INTO nodes (id, seen_at) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
        )
        .bind(node)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn next_scheduled_at(&self) -> Result<Option<i64>> {
        let next: Option<i64> =
            sqlx::query_scalar("SELECT MIN(run_at) FROM job_queue WHERE NOT ready")
                .fetch_one(&self.pool)
                .await?;
        // The dispatcher wakes then to claim it, and the claim must sweep it into the queue
        // (another node may have scheduled it).
        if let Some(at) = next {
            self.sweep_by(at);
        }
        Ok(next)
    }

    async fn cancel(&self, id: JobId, now: i64) -> Result<JobState> {
        let mut tx = self.pool.begin().await?;
        // The queue row before the job's row, as every statement takes them: a queued or
        // scheduled job leaves the queue here. (A claim holding the row commits first, and
        // then the job is running.)
        unqueue(&mut tx, id).await?;
        let job = fetch_job(&mut tx, id).await?.ok_or(StoreError::NotFound {
            what: "job",
            id: id.to_string(),
        })?;
        let now = transition_at(&job, now);
        let state = match job.state {
            JobState::Scheduled | JobState::Queued => {
                sqlx::query(AssertSqlSafe(format!(
                    "UPDATE jobs SET state = 'cancelled', outcome = NULL, finished_at = $1, updated_at = $1,
                            event_seq = event_seq + 1, {}
                     WHERE id = $3",
                    append_row_event("event_seq + 1", "$1", "$2")
                )))
                .bind(now)
                .bind(history::tail(&NewEvent::state(JobState::Cancelled, json!({}))))
                .bind(id)
                .execute(&mut *tx)
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
            self.notify([Notice::Events(id), Notice::Ended(id)]);
        } else {
            self.notify([Notice::Events(id)]);
        }
        Ok(state)
    }

    async fn retry(&self, id: JobId, now: i64) -> Result<JobState> {
        let mut tx = self.pool.begin().await?;
        let job = fetch_job(&mut tx, id).await?;
        let (retry, now) = retried(id, job.clone(), now)?;
        // A fresh budget is new settings for this job (the others that shared its settings
        // keep theirs).
        let settings = job
            .map(|j| Settings::of_parts(&j.limits, &retry, &j.grants))
            .ok_or_else(|| StoreError::NotFound {
                what: "job",
                id: id.to_string(),
            })?;
        // A failed or cancelled job has no queue row (every way there takes it off the queue).
        sqlx::query(AssertSqlSafe(format!(
            "WITH s AS (
                 INSERT INTO job_settings (key, limits, retry, grants, used_at)
                 VALUES ($1, $5, $6, $7, $2)
                 ON CONFLICT (key) DO UPDATE SET used_at = excluded.used_at
             ), j AS (
                 UPDATE jobs SET state = 'queued', settings = $1, run_at = $2, cancel_requested = FALSE, outcome = NULL,
                        error = NULL, output = NULL, finished_at = NULL, deadline_at = NULL, updated_at = $2,
                        event_seq = event_seq + 1, {}
                 WHERE id = $4
                 RETURNING id, priority, run_at
             )
             INSERT INTO job_queue (job_id, priority, run_at, deadline_at, ready)
             SELECT id, priority, run_at, NULL, TRUE FROM j",
            append_row_event("event_seq + 1", "$2", "$3")
        )))
        .bind(&settings.key[..])
        .bind(now)
        .bind(history::tail(&NewEvent::state(
            JobState::Queued,
            json!({ "retried": true }),
        )))
        .bind(id)
        .bind(&settings.limits)
        .bind(&settings.retry)
        .bind(&settings.grants)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.notify([Notice::Events(id), Notice::JobsAvailable]);
        Ok(JobState::Queued)
    }

    async fn prune(&self, before: i64) -> Result<u64> {
        // No index of `jobs` reads `finished_at`, so the jobs are walked in id
        // order, oldest first, a page at a time. A job created at or after `before` cannot
        // have finished before it, so the walk stops at the first page that reaches one; what
        // it reads beyond the pruned jobs is the old jobs that stay (still running or waiting,
        // or read by a job that waits for their output), and one page.
        const PAGE: i64 = 1000;
        let mut cursor = 0i64;
        let mut pruned = 0u64;
        // The settings of the jobs walked past that stay.
        let mut kept: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
        loop {
            let page: Vec<(i64, i64, bool, Vec<u8>)> =
                sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT id, created_at, {} AS doomed, settings FROM jobs WHERE id > $2 ORDER BY id LIMIT $3",
                    super::rows::prunable("$1")
                )))
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
                // The condition is checked again under the rows' locks (a job may have been
                // retried since the page was read), and a job's history goes only with it.
                let ids: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
                    "WITH j AS (
                         DELETE FROM jobs WHERE id = ANY($2) AND {} RETURNING id
                     ), e AS (
                         DELETE FROM events WHERE job_id IN (SELECT id FROM j)
                     )
                     SELECT id FROM j",
                    super::rows::prunable("$1")
                )))
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
        // touches settings it relies on (`touch_settings`), so a job that refers to one of these
        // was created long before `before` and was walked past above.
        let kept: Vec<Vec<u8>> = kept.into_iter().collect();
        sqlx::query("DELETE FROM job_settings WHERE used_at < $1 AND NOT (key = ANY($2))")
            .bind(before.saturating_sub(SETTINGS_GRACE_MS))
            .bind(&kept)
            .execute(&self.pool)
            .await?;
        let mut tx = self.pool.begin().await?;
        // Finished workflow runs (their nodes, elements and events go with them).
        sqlx::query("DELETE FROM workflow_runs WHERE finished_at IS NOT NULL AND finished_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(pruned)
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
        .map_err(|e| match StoreError::from(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!(
                "a schedule named {:?} already exists",
                name.as_deref().unwrap_or("")
            )),
            other => other,
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn claimed(ids: &[JobId]) -> Vec<Claimed> {
        ids.iter()
            .map(|&id| Claimed {
                id,
                module_digest: String::new(),
                input: Vec::new(),
                limits: Default::default(),
                grants: Default::default(),
                attempt: 1,
                deadline_at: None,
                input_from: None,
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
