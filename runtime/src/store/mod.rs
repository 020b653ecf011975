//! The durable store: modules, jobs, their attempts and histories, and schedules behind the
//! [`Store`] traits (one per area), workflow definitions and runs behind [`WorkflowStore`],
//! with a backend per database (`sqlite/`, `postgres/`) that implements both ([`Backend`]),
//! each with its own SQL (`.sql` files beside each area's Rust) and its own baseline migration
//! (`runtime/migrations/{sqlite,postgres}`) of one schema. What both share is Rust: the rows
//! and their conversion (`rows.rs`), a job's history format (`history.rs`), its settings
//! (`settings.rs`), the retry decision (`retry.rs`), queues' settings, rates and fair shares
//! (`queues.rs`), concurrency keys' places (`keys.rs`) and a workflow step's writes
//! (`workflow_step.rs`). The backend is chosen once, at start-up, from the database URL;
//! errors are [`StoreError`], which says what kind of failure it was and keeps the driver's
//! detail to the log.
//!
//! Every state transition is one transaction that also appends the job's events, so a job
//! exists iff the transaction that accepted it committed, and its history is complete.

mod error;
pub mod events;
mod history;
pub mod keys;
mod lifecycle;
pub mod model;
mod postgres;
pub mod queues;
pub mod retry;
mod rows;
mod settings;
mod sqlite;
mod workflow_step;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

pub use error::StoreError;
pub use events::EventStore;
pub use model::*;
pub use queues::{DEFAULT_QUEUE, Holding, QueueInfo, QueueSettings, Rate};
pub use retry::{RetryPolicy, decide};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How long the processes' activity reports are kept (ms): a day.
pub const ACTIVITY_KEPT_MS: i64 = 24 * 60 * 60 * 1000;

/// Which attempts [`Store::rescue`] ends `lost`.
#[derive(Debug, Clone, Copy)]
pub enum Rescue<'a> {
    /// Those whose lease ran out before `now`, except the jobs in `keep`: the calling node's
    /// own, whose completions it still holds (it writes them once the store takes writes).
    Expired { keep: &'a [JobId] },
    /// Every attempt these workers run, whatever its lease: nodes known to be gone (a node
    /// restarted under the same id, or whose process is gone from this host).
    Workers(&'a [String]),
}

/// Something changed that someone may be waiting for. Delivered to every subscriber on every
/// node (Postgres: through LISTEN/NOTIFY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// New events were written for this job.
    Events(JobId),
    /// This job reached a final state (sent with its `Events`).
    Ended(JobId),
    /// Jobs became claimable.
    JobsAvailable,
    /// A workflow run has new events (for whoever follows it).
    Run(RunId),
    /// A workflow run was created or asked to cancel (for the workflow engine).
    RunRequest(RunId),
}

/// Carries notices between the processes that share one database (Postgres: NOTIFY out,
/// LISTEN in). Run by the process that owns the store, never by the store itself.
#[async_trait]
pub trait NoticeRelay: Send + 'static {
    /// Starts listening for other processes' notices: what they send after this returns is
    /// heard.
    async fn listen(&mut self) -> Result<()>;
    /// Relays until `stop` is cancelled, then sends the notices this process had already
    /// queued, and returns.
    async fn run(self: Box<Self>, stop: tokio_util::sync::CancellationToken);
}

/// The job store, as the job service, the scheduler and the API use it: every area's trait
/// ([`ModuleStore`], [`JobStore`], [`QueueStore`], [`ScheduleStore`], [`EventStore`]). It knows nothing of
/// workflows ([`WorkflowStore`]). Implemented by [`sqlite::SqliteStore`] and
/// [`postgres::PgStore`], each area in a file of its own.
pub trait Store: ModuleStore + JobStore + QueueStore + ScheduleStore + EventStore {}

impl<T: ModuleStore + JobStore + QueueStore + ScheduleStore + EventStore> Store for T {}

/// Modules: content-addressed component bytes and the names that point at them.
#[async_trait]
pub trait ModuleStore: Send + Sync + 'static {
    /// Stores a module (idempotent on digest) and points `name` at it. `true` if the bytes
    /// were new.
    async fn put_module(&self, module: NewModule, now: i64) -> Result<(ModuleRecord, bool)>;
    /// A module by `sha256:…` digest or by name.
    async fn get_module(&self, name_or_digest: &str) -> Result<Option<ModuleRecord>>;
    async fn module_bytes(&self, digest: &str) -> Result<Option<Vec<u8>>>;
    async fn list_modules(&self) -> Result<Vec<ModuleRecord>>;
}

/// Jobs as users see them: submission, reading, history, cancel, retry and retention.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Changes as they are committed: this process's, and other processes' while the store's
    /// relay runs ([`JobStore::relay`]).
    fn subscribe(&self) -> broadcast::Receiver<Notice>;
    /// What carries this store's notices to the other processes sharing its database and
    /// theirs to this one's subscribers, for the process to run ([`crate::notices::Relay`]).
    /// `None` when it was taken already, and for a backend whose changes no other process
    /// hears (SQLite: the others poll the file).
    fn relay(&self) -> Option<Box<dyn NoticeRelay>>;
    /// Inserts a job and its first event in one transaction. With an idempotency key already
    /// used, returns the first job and `false`.
    async fn insert_job(&self, job: NewJob, now: i64) -> Result<(Job, bool)> {
        let mut inserted = self.insert_jobs(vec![job], now).await?;
        inserted
            .pop()
            .ok_or_else(|| StoreError::Corrupt("insert returned nothing".into()))
    }
    /// Inserts jobs in one transaction (group commit): all or none are stored. Each result is
    /// the job and whether it was created (`false`: its idempotency key was already used).
    async fn insert_jobs(&self, jobs: Vec<NewJob>, now: i64) -> Result<Vec<(Job, bool)>>;
    /// [`JobStore::insert_jobs`], if every module name in `names` still points at the digest
    /// given with it (`(name, digest)`: names the caller resolved earlier); `None`, with
    /// nothing stored, when one does not. Lets a caller resolve names from a cache without
    /// storing a job under a digest its name no longer points at.
    async fn insert_jobs_named(
        &self,
        jobs: Vec<NewJob>,
        names: &[(String, String)],
        now: i64,
    ) -> Result<Option<Vec<(Job, bool)>>>;
    async fn get_job(&self, id: JobId) -> Result<Option<Job>>;
    /// A finished job's output (outputs never change once a job ended).
    async fn job_output(&self, id: JobId) -> Result<Option<Vec<u8>>>;
    async fn attempts(&self, id: JobId) -> Result<Vec<Attempt>>;
    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>>;
    /// How many jobs are in each state (for tests and benchmarks: it reads the whole table).
    async fn count_by_state(&self) -> Result<Vec<(JobState, u64)>>;
    /// The jobs ended per minute since `since`, and the processes that reported since
    /// `seen_since` (for the dashboard).
    async fn activity(&self, since: i64, seen_since: i64) -> Result<Activity>;
    /// How many jobs are scheduled, queued and running, in that order (for metrics: it reads
    /// only the live part of the store, which does not grow with the jobs that ended).
    async fn count_unfinished(&self) -> Result<[(JobState, u64); 3]>;
    /// Events of a job with `seq > after`, in order, at most `limit`.
    async fn events(&self, id: JobId, after: i64, limit: u32) -> Result<Vec<Event>>;
    /// Cancels a job: at once when scheduled or queued; a running job gets a cancel request
    /// that its worker acts on. Returns the job's state afterwards.
    async fn cancel(&self, id: JobId, now: i64) -> Result<JobState>;
    /// Puts a failed or cancelled job back in the queue with a fresh attempt budget.
    async fn retry(&self, id: JobId, now: i64) -> Result<JobState>;
    /// Deletes finished jobs (and their events) that finished before `before`, and the
    /// settings no job refers to any more.
    async fn prune(&self, before: i64) -> Result<u64>;
}

/// The queue as worker nodes drive it: claims, attempts' events and ends, leases, rescue.
#[async_trait]
pub trait QueueStore: Send + Sync + 'static {
    /// Moves due `scheduled` jobs to `queued`, then claims up to `limit` queued jobs for
    /// `worker`, starting an attempt of each: from the queues that have work, not paused and
    /// within their limits (`max_running`, `rate`: across every node) and the node's own room
    /// for each ([`Holding`]), shared by weight ([`queues::fair_pick`], counting the jobs the
    /// node holds of each queue already); within a queue by priority, then run_at, then age.
    async fn claim(
        &self,
        worker: &str,
        limit: u32,
        holding: &Holding,
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<Claimed>>;
    /// Writes the settings of the queues a process declares (`[queues.NAME]`): weight and
    /// limits as given; `paused` only when it says so (a queue resumed through the API stays
    /// resumed until a process that declares it paused starts).
    async fn configure_queues(&self, queues: &[QueueSettings], now: i64) -> Result<()>;
    /// Every queue that has settings or jobs that have not ended, by name.
    async fn queues(&self) -> Result<Vec<QueueInfo>>;
    /// Pauses or resumes queue `name`; returns it as listed ([`Self::queues`]) afterwards.
    /// `None` if no such queue is known.
    async fn set_queue_paused(
        &self,
        name: &str,
        paused: bool,
        now: i64,
    ) -> Result<Option<QueueInfo>>;
    /// Appends log/progress events of a running attempt. `false` if the worker no longer holds it.
    async fn append_events(
        &self,
        id: JobId,
        worker: &str,
        attempt: u32,
        events: &[NewEvent],
        now: i64,
    ) -> Result<bool>;
    /// Ends attempts, in one transaction. A completion from a worker that no longer holds the
    /// attempt is refused.
    async fn complete(&self, completions: &[Completion], now: i64) -> Result<Vec<Completed>>;
    /// Renews the leases of the jobs `jobs` that `worker` runs. Returns each of them it still
    /// holds and whether a cancel was requested. (Found by id: a scan for the worker's running
    /// jobs would read every dead row version a busy Postgres table has not vacuumed yet.)
    async fn heartbeat(
        &self,
        worker: &str,
        jobs: &[JobId],
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<(JobId, bool)>>;
    /// Ends attempts as `lost` and requeues or fails their jobs (their retry policy's
    /// `max_lost`): those whose lease expired, or those of workers known to be gone.
    async fn rescue(&self, which: Rescue<'_>, now: i64) -> Result<Vec<JobId>>;
    /// The workers that hold running jobs (each once).
    async fn running_workers(&self) -> Result<Vec<String>>;
    /// Puts jobs `worker` holds back in the queue without charging their attempt (`(job,
    /// attempt)`): a node that shuts down gives back what it did not finish. Returns the jobs
    /// released; one the worker no longer held at that attempt is left alone.
    async fn release(&self, worker: &str, jobs: &[(JobId, u32)], now: i64) -> Result<Vec<JobId>>;
    /// Records that node `node` could write at `now`: a write that proves the store takes
    /// writes (the readiness check and the start-up check).
    async fn probe_write(&self, node: &str, now: i64) -> Result<()>;
    /// Records a process's report of itself at `now`: its slots, and adds the jobs it ended to
    /// its minutes; drops the reports older than a day.
    async fn report_activity(&self, report: &ActivityReport, now: i64) -> Result<()>;
    /// The earliest `run_at` of a scheduled job, to know when to look again.
    async fn next_scheduled_at(&self) -> Result<Option<i64>>;
    /// Tidies the queue's storage if enough changed since the last time (Postgres: vacuums
    /// the queue's tables once this store has taken enough rows off them). `true` if it did
    /// any work. A node's upkeep asks a few times a second.
    async fn tidy_queue(&self) -> Result<bool> {
        Ok(false)
    }
}

/// Cron schedules.
#[async_trait]
pub trait ScheduleStore: Send + Sync + 'static {
    async fn add_schedule(&self, new: NewSchedule, now: i64) -> Result<Schedule>;
    /// Schedule `id` submitted a job or started a run (its pending tick, if any, is done).
    async fn schedule_fired(&self, id: i64, fired: Fired) -> Result<()>;
    /// Schedule `id` keeps `tick` until its last job or run ends (`Overlap::QueueOne`).
    async fn schedule_pending(&self, id: i64, tick: i64) -> Result<()>;
    async fn list_schedules(&self) -> Result<Vec<Schedule>>;
    async fn delete_schedule(&self, id_or_name: &str) -> Result<bool>;
    /// Claims the schedules due at `now`: moves each one's `next_run_at` to `next(schedule,
    /// now)` and returns them, so that exactly one node fires each tick.
    async fn take_due_schedules(
        &self,
        now: i64,
        next: for<'c> fn(&'c Schedule, i64) -> Option<i64>,
    ) -> Result<Vec<Schedule>>;
}

/// A whole backend: the job store and the workflow service's tables, as `open` returns it.
/// Each service keeps the part it uses (`Arc<dyn Store>`, `Arc<dyn WorkflowStore>`).
pub trait Backend: Store + WorkflowStore {}

impl<T: Store + WorkflowStore> Backend for T {}

/// The workflow service's tables: definitions, runs, their nodes, `for_each` elements and run
/// events.
#[async_trait]
pub trait WorkflowStore: Send + Sync + 'static {
    /// Stores `definition` (JSON) as the next version of workflow `name`, unless it equals the
    /// latest version, which is then returned with `false`.
    async fn put_workflow(
        &self,
        name: &str,
        definition: &str,
        now: i64,
    ) -> Result<(WorkflowRecord, bool)>;
    /// One version of a workflow, or its latest when `version` is `None`.
    async fn get_workflow(
        &self,
        name: &str,
        version: Option<i64>,
    ) -> Result<Option<WorkflowRecord>>;
    /// The latest version of every workflow, by name.
    async fn list_workflows(&self) -> Result<Vec<WorkflowRecord>>;
    /// Stores a run and its nodes, all `pending`, and announces it.
    async fn create_run(&self, run: NewRun, now: i64) -> Result<RunRecord>;
    /// The run, every node (with its job's state) and the elements still running.
    async fn get_run(&self, id: RunId) -> Result<Option<RunSnapshot>>;
    /// Writes one engine step in one transaction, with the jobs it submits, if the run is
    /// still at `rev`. `None`: someone stepped the run in between (nothing was written).
    /// Otherwise the ids of the jobs submitted, node jobs first, then element jobs, in order.
    async fn apply_run(
        &self,
        id: RunId,
        rev: i64,
        changes: RunChanges,
        now: i64,
    ) -> Result<Option<Vec<JobId>>>;
    /// Runs that need a step: never stepped, a job of theirs ended, a cancel was requested,
    /// or their deadline passed.
    async fn runs_to_advance(&self, now: i64) -> Result<Vec<RunId>>;
    /// Every run not yet finished (an engine steps each once when it starts).
    async fn active_runs(&self) -> Result<Vec<RunId>>;
    /// How many runs are `running` and `cancelling` (for metrics).
    async fn count_active_runs(&self) -> Result<[(RunState, u64); 2]>;
    /// Up to `limit` pending elements of a `for_each` node from index `from`: index, input.
    async fn pending_items(
        &self,
        run: RunId,
        node: &str,
        from: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>>;
    /// Every element of a `for_each` node, in order: its job's output (`None` if it has none).
    async fn item_outputs(&self, run: RunId, node: &str) -> Result<Vec<Option<Vec<u8>>>>;
    /// Every element of a `for_each` node, in order: index, state, job.
    async fn items(&self, run: RunId, node: &str) -> Result<Vec<(i64, NodeState, Option<JobId>)>>;
    /// Puts a `failed` or `cancelled` run back to `running` with deadline `deadline_at`: its
    /// succeeded nodes keep their jobs and outputs; the nodes that failed, were cancelled or
    /// were skipped are planned again (a `for_each` node's succeeded elements are kept, the
    /// others run again), and a `run` event records the retry. Returns the nodes planned
    /// again. `inputs` are new inputs for nodes planned again from their start (`Conflict`,
    /// and nothing written, for another node). `NotFound` for an unknown run, `Conflict` for
    /// one that is not failed or cancelled.
    async fn retry_run(
        &self,
        id: RunId,
        deadline_at: Option<i64>,
        inputs: &[(String, Vec<u8>)],
        now: i64,
    ) -> Result<Vec<String>>;
    /// Asks a run to stop: returns its state afterwards.
    async fn request_run_cancel(&self, id: RunId, now: i64) -> Result<RunState>;
    /// Run events with `seq > after`, in order, at most `limit`.
    async fn run_events(&self, id: RunId, after: i64, limit: u32) -> Result<Vec<RunEvent>>;
    /// Runs newest first, as `filter` says (without their nodes).
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>>;
}

/// Opens the store a URL names: `postgres://…` or `postgresql://…` for Postgres, anything
/// else is a SQLite file path (`sqlite://path` also accepted). Applies migrations.
pub async fn open(url: &str) -> Result<Arc<dyn Backend>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::connect(url).await?))
    } else {
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        Ok(Arc::new(sqlite::SqliteStore::open(path).await?))
    }
}

/// Opens a Postgres store in its own schema (created if missing): for tests and for running
/// several independent installations in one database.
pub async fn open_postgres_schema(url: &str, schema: &str) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(
        postgres::PgStore::connect_schema(url, Some(schema)).await?,
    ))
}

/// A database URL with its password masked, for messages and logs: the password of its
/// user part and the value of a `password=` parameter.
pub fn redacted_url(url: &str) -> String {
    let mut out = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    };
    let mut from = 0;
    while let Some(found) = out[from..].find("password=") {
        let start = from + found + "password=".len();
        let end = out[start..].find('&').map_or(out.len(), |n| start + n);
        out.replace_range(start..end, "***");
        from = start + 3;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redacted_url;

    #[test]
    fn passwords_in_database_urls_are_masked() {
        assert_eq!(
            redacted_url("postgres://app:hunter2@db:5432/jobs"),
            "postgres://app:***@db:5432/jobs"
        );
        assert_eq!(
            redacted_url("postgres://app@db/jobs?sslmode=require&password=hunter2&x=1"),
            "postgres://app@db/jobs?sslmode=require&password=***&x=1"
        );
        assert_eq!(
            redacted_url("postgres://app@db/jobs"),
            "postgres://app@db/jobs"
        );
        assert_eq!(redacted_url("wasmjobs.db"), "wasmjobs.db");
    }
}
