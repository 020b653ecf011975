//! The records the store keeps — modules, jobs, attempts, events — and the inputs to its
//! operations. Times are milliseconds since the Unix epoch.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use wasmjobs_host::{Grants, Limits, Outcome};

use super::retry::RetryPolicy;

pub type JobId = i64;

/// SPEC.md's job states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for `run_at` or a retry backoff.
    Scheduled,
    Queued,
    Running,
    Succeeded,
    /// Attempts exhausted or not retryable: the dead-letter state, retryable by hand.
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Scheduled,
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown job state {s:?}: expected one of {}",
                    JobState::ALL.map(|s| s.as_str()).join(", ")
                )
            })
    }
}

/// A stored module (without its bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRecord {
    pub digest: String,
    pub size: u64,
    pub world: String,
    pub imports: Vec<String>,
    /// Names that point at this digest.
    pub names: Vec<String>,
    pub created_at: i64,
}

/// What to store for a new module.
#[derive(Debug, Clone)]
pub struct NewModule {
    pub digest: String,
    pub world: String,
    pub imports: Vec<String>,
    pub bytes: Vec<u8>,
    pub name: Option<String>,
    /// The token pointing `name` at this digest (`None`: no token).
    pub owner: Option<String>,
    /// Whether `name` may be moved even when another token (or none) set it: for admins.
    pub may_move: bool,
}

/// A job to insert. Validated by the job service before it gets here.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub module_digest: String,
    pub input: Vec<u8>,
    pub limits: Limits,
    pub retry: RetryPolicy,
    pub grants: Grants,
    /// The queue the job waits in (a valid [`queue name`](valid_queue_name)).
    pub queue: String,
    pub priority: i64,
    /// Not before this time; `None` is now.
    pub run_at: Option<i64>,
    pub idempotency_key: Option<String>,
    /// Overall deadline: no attempt starts after it.
    pub deadline_at: Option<i64>,
    /// Opaque reference for a service built on jobs (workflows).
    pub workflow_ref: Option<String>,
    /// The job's input is this (finished) job's output, read when an attempt starts; `input`
    /// is then empty. Lets a workflow pass a large output on without copying it.
    pub input_from: Option<JobId>,
    /// The job's concurrency key and limit, if it has one.
    pub concurrency: Option<Concurrency>,
}

/// A job's concurrency key: at most `limit` jobs with `key` hold one of its places at once,
/// across every node. A job holds a place from when it is admitted until it ends (while it
/// runs, and while it waits for its `run_at` or to retry); a job that finds its key full waits
/// for a place without holding a slot (see [`crate::store::keys`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concurrency {
    pub key: String,
    pub limit: u32,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: JobId,
    pub module: String,
    pub state: JobState,
    pub queue: String,
    pub priority: i64,
    pub run_at: i64,
    #[serde(skip)]
    pub input: Vec<u8>,
    pub limits: Limits,
    pub retry: RetryPolicy,
    pub grants: Grants,
    pub idempotency_key: Option<String>,
    pub attempts: u32,
    /// Of `attempts`, those that ended `lost` (counted against `retry.max_lost` instead).
    pub lost_attempts: u32,
    pub deadline_at: Option<i64>,
    pub worker: Option<String>,
    pub lease_until: Option<i64>,
    pub cancel_requested: bool,
    pub outcome: Option<Outcome>,
    #[serde(skip)]
    pub output: Option<Vec<u8>>,
    pub error: Option<String>,
    pub workflow_ref: Option<String>,
    /// The job whose output is this job's input (see [`NewJob::input_from`]).
    pub input_from: Option<JobId>,
    pub concurrency: Option<Concurrency>,
    /// Queued or scheduled, and waiting for a place of its concurrency key.
    pub waiting_for_key: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

impl Job {
    /// The job a successful insert of `new` created (no read-back needed).
    pub fn inserted(id: JobId, new: NewJob, state: JobState, run_at: i64, now: i64) -> Job {
        Job {
            id,
            module: new.module_digest,
            state,
            queue: new.queue,
            priority: new.priority,
            run_at,
            input: new.input,
            limits: new.limits,
            retry: new.retry,
            grants: new.grants,
            idempotency_key: new.idempotency_key,
            attempts: 0,
            lost_attempts: 0,
            deadline_at: new.deadline_at,
            worker: None,
            lease_until: None,
            cancel_requested: false,
            outcome: None,
            output: None,
            error: None,
            workflow_ref: new.workflow_ref,
            input_from: new.input_from,
            concurrency: new.concurrency,
            waiting_for_key: false,
            created_at: now,
            updated_at: now,
            finished_at: None,
        }
    }
}

/// One attempt of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u32,
    pub worker: String,
    pub outcome: Option<Outcome>,
    pub trap: Option<String>,
    pub error: Option<String>,
    pub fuel_consumed: Option<u64>,
    pub peak_memory_bytes: Option<u64>,
    pub wall_time_us: Option<u64>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

/// One entry of a job's history. `seq` is 1, 2, 3, … per job, with no gaps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub job_id: JobId,
    pub seq: i64,
    pub kind: String,
    pub data: Value,
    pub at: i64,
}

/// An event not yet written: its kind and data.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: &'static str,
    pub data: Value,
}

impl NewEvent {
    pub fn state(state: JobState, extra: Value) -> NewEvent {
        let mut data = serde_json::json!({ "state": state });
        if let (Value::Object(d), Value::Object(e)) = (&mut data, extra) {
            d.extend(e);
        }
        NewEvent {
            kind: "state",
            data,
        }
    }
}

/// A job handed to a worker by a claim.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: JobId,
    pub module_digest: String,
    /// The queue it was claimed from.
    pub queue: String,
    /// What the attempt reads: the job's own input or, for a job with `input_from`, that
    /// job's output, read by the claim's transaction (empty if it has none).
    pub input: Vec<u8>,
    pub limits: Limits,
    pub grants: Grants,
    pub attempt: u32,
    pub deadline_at: Option<i64>,
    /// The job whose output is `input` (see [`NewJob::input_from`]).
    pub input_from: Option<JobId>,
    /// When the job became ready to run (its `run_at`: submission, schedule or backoff), when
    /// this attempt started, and when the job was submitted (ms since the epoch).
    pub ready_at: i64,
    pub started_at: i64,
    pub created_at: i64,
    /// The job has a concurrency key (its end frees a place of the key).
    pub keyed: bool,
}

/// How an attempt ended, reported by the worker that ran it.
#[derive(Debug, Clone)]
pub struct Completion {
    pub job_id: JobId,
    pub attempt: u32,
    pub worker: String,
    pub outcome: Outcome,
    pub trap: Option<String>,
    pub error: Option<String>,
    pub output: Vec<u8>,
    pub fuel_consumed: u64,
    pub peak_memory_bytes: u64,
    pub wall_time_us: u64,
    /// When the attempt ended: the completer writes a batch at its last attempt's end, not at
    /// the time the store accepted it (which may be much later after an outage).
    pub ended_at: i64,
    /// When the job was submitted, for the end-to-end time of a job this attempt ends (not
    /// stored; `None` when unknown, as for a lost attempt).
    pub submitted_at: Option<i64>,
    /// Log and progress events not yet written.
    pub events: Vec<NewEvent>,
    /// A `failed` attempt the job marked permanent (`outcome.fail-permanently`): not retried.
    pub permanent: bool,
    /// The job has a concurrency key (as claimed): its end hands one of the key's places on,
    /// in the same transaction.
    pub keyed: bool,
}

impl Completion {
    /// What the rescuer records for an attempt whose worker stopped renewing its lease.
    pub fn lost(job_id: JobId, attempts: i64, worker: Option<String>) -> Completion {
        Completion {
            job_id,
            attempt: u32::try_from(attempts).unwrap_or(0),
            error: Some(format!(
                "worker {} stopped renewing its lease (it died or lost its connection)",
                worker.as_deref().unwrap_or("?")
            )),
            worker: worker.unwrap_or_default(),
            outcome: wasmjobs_host::Outcome::Lost,
            trap: None,
            output: Vec::new(),
            fuel_consumed: 0,
            peak_memory_bytes: 0,
            wall_time_us: 0,
            ended_at: now_ms(),
            submitted_at: None,
            events: Vec::new(),
            permanent: false,
            // Not known here: the rescuer's ending reads the job's row, key included.
            keyed: false,
        }
    }
}

/// What a completion did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completed {
    /// Applied: the job is now in this state.
    Applied(JobState),
    /// Refused: the worker no longer holds this attempt (its lease expired and the job moved on).
    Refused,
}

/// Filters for listing jobs. `cursor` is the last id of the previous page.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub module_digest: Option<String>,
    pub queue: Option<String>,
    pub limit: u32,
    pub cursor: Option<JobId>,
}

/// Which workflow runs to list, newest first: of one workflow, in one state, older than the
/// run `cursor`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    pub workflow: Option<String>,
    pub state: Option<RunState>,
    pub limit: u32,
    pub cursor: Option<RunId>,
}

/// One version of a workflow definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    pub name: String,
    pub version: i64,
    /// The definition as JSON.
    pub definition: Value,
    pub created_at: i64,
}

/// A cron schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: i64,
    pub name: Option<String>,
    pub cron: String,
    /// The IANA time zone the cron expression is read in; UTC if none.
    pub tz: Option<String>,
    /// What a tick does while the job or run of its previous tick has not ended.
    pub overlap: Overlap,
    pub target: Value,
    pub next_run_at: i64,
    pub created_at: i64,
    /// The job of its last submission (a schedule that submits jobs).
    pub last_job: Option<JobId>,
    /// The run it last started (a schedule that starts workflow runs).
    pub last_run: Option<RunId>,
    /// A tick kept until the last job or run ends ([`Overlap::QueueOne`]).
    pub pending_tick: Option<i64>,
}

/// What a schedule's tick did: submitted a job or started a workflow run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    Job(JobId),
    Run(RunId),
}

impl Fired {
    /// The schedule's `last_job` and `last_run` after it.
    pub fn job_and_run(self) -> (Option<JobId>, Option<RunId>) {
        match self {
            Fired::Job(job) => (Some(job), None),
            Fired::Run(run) => (None, Some(run)),
        }
    }
}

/// A schedule to add.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    pub name: Option<String>,
    pub cron: String,
    pub tz: Option<String>,
    pub overlap: Overlap,
    pub target: Value,
    pub next_run_at: i64,
}

/// What a schedule's tick does while the job (or workflow run) of its previous tick has not
/// ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Fire it anyway: jobs or runs of several ticks may run at once.
    #[default]
    Allow,
    /// Fire nothing for this tick.
    Skip,
    /// Keep this tick (the latest such, one at most) and fire it once the previous job or run
    /// ended.
    QueueOne,
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Allow => "allow",
            Overlap::Skip => "skip",
            Overlap::QueueOne => "queue_one",
        }
    }
}

impl std::str::FromStr for Overlap {
    type Err = String;
    fn from_str(s: &str) -> Result<Overlap, String> {
        match s {
            "allow" => Ok(Overlap::Allow),
            "skip" => Ok(Overlap::Skip),
            "queue_one" => Ok(Overlap::QueueOne),
            other => Err(format!(
                "unknown overlap {other:?}: allow, skip or queue_one"
            )),
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A workflow run's id.
pub type RunId = i64;

/// The states of a workflow run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    /// Cancel requested (or the run's timeout passed): no new node starts, and the run ends
    /// once the jobs it already started have stopped.
    Cancelling,
    Succeeded,
    Failed,
    Cancelled,
}

/// The states of a node of a run (and of one element of a `for_each` node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Waiting for its upstream nodes.
    Pending,
    Running,
    Succeeded,
    Failed,
    /// Its condition was false.
    Skipped,
    Cancelled,
}

macro_rules! str_enum {
    ($ty:ident { $($variant:ident => $s:literal),+ $(,)? }, final: $($fin:ident)|+) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $s),+ }
            }
            pub fn is_final(self) -> bool {
                matches!(self, $($ty::$fin)|+)
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    format!("unknown {} {s:?}", stringify!($ty))
                })
            }
        }
    };
}

str_enum!(RunState {
    Running => "running", Cancelling => "cancelling", Succeeded => "succeeded",
    Failed => "failed", Cancelled => "cancelled",
}, final: Succeeded | Failed | Cancelled);

str_enum!(NodeState {
    Pending => "pending", Running => "running", Succeeded => "succeeded", Failed => "failed",
    Skipped => "skipped", Cancelled => "cancelled",
}, final: Succeeded | Failed | Skipped | Cancelled);

impl From<JobState> for NodeState {
    /// What a node (or element) is when its job is in `state`.
    fn from(state: JobState) -> NodeState {
        match state {
            JobState::Scheduled | JobState::Queued | JobState::Running => NodeState::Running,
            JobState::Succeeded => NodeState::Succeeded,
            JobState::Failed => NodeState::Failed,
            JobState::Cancelled => NodeState::Cancelled,
        }
    }
}

/// A stored workflow run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    pub id: RunId,
    pub workflow: String,
    pub version: i64,
    pub state: RunState,
    #[serde(skip)]
    pub input: Vec<u8>,
    pub error: Option<String>,
    pub cancel_requested: bool,
    pub deadline_at: Option<i64>,
    /// Bumped by every step of the engine (optimistic concurrency between nodes).
    #[serde(skip)]
    pub rev: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

/// A node of a run, with the state of its job (plain nodes) read alongside.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub name: String,
    /// The module digest the run pinned.
    pub module: String,
    pub state: NodeState,
    pub job_id: Option<JobId>,
    /// `for_each` nodes: how many elements, how many submitted, ended, and failed.
    pub items_total: Option<i64>,
    pub items_next: i64,
    pub items_done: i64,
    pub items_failed: i64,
    /// A `for_each` node's gathered outputs.
    pub output: Option<Vec<u8>>,
    pub error: Option<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The node's job's state and error, when it has a job.
    pub job_state: Option<JobState>,
    pub job_error: Option<String>,
    /// The input given for the node when its run was retried: it runs on this instead of the
    /// input its upstreams (or the run) give it.
    pub input: Option<Vec<u8>>,
}

/// A submitted element of a `for_each` node whose end the run has not yet taken in.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRecord {
    pub node: String,
    pub idx: i64,
    pub job_id: JobId,
    pub job_state: JobState,
    pub job_error: Option<String>,
}

/// A run as the engine steps it: the run, every node, and the elements still running.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSnapshot {
    pub run: RunRecord,
    pub nodes: Vec<NodeRecord>,
    pub running_items: Vec<ItemRecord>,
}

impl RunSnapshot {
    /// The jobs the run waits on that have not ended: its running nodes' and elements'.
    pub fn outstanding_jobs(&self) -> Vec<JobId> {
        let nodes = self
            .nodes
            .iter()
            .filter_map(|n| match (n.job_id, n.job_state) {
                (Some(j), Some(s)) if n.state == NodeState::Running && !s.is_final() => Some(j),
                _ => None,
            });
        let items = self
            .running_items
            .iter()
            .filter(|i| !i.job_state.is_final())
            .map(|i| i.job_id);
        nodes.chain(items).collect()
    }
}

/// A run to create: every node starts `pending`; the engine's first step starts the roots.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub workflow: String,
    pub version: i64,
    pub input: Vec<u8>,
    pub deadline_at: Option<i64>,
    /// Node name and pinned module digest, in definition order.
    pub nodes: Vec<(String, String)>,
}

/// One step of the engine, written in one transaction if the run's `rev` is still the one
/// the step read.
#[derive(Debug, Clone, Default)]
pub struct RunChanges {
    /// A new run state and error.
    pub state: Option<(RunState, Option<String>)>,
    /// Changed nodes, written whole (their `job_id` is set by `node_jobs`).
    pub nodes: Vec<NodeRecord>,
    /// Jobs to submit for nodes, by node name. Each such node is also in `nodes`, which
    /// writes its job id.
    pub node_jobs: Vec<(String, NewJob)>,
    /// Elements to store as pending: node, index, input.
    pub new_items: Vec<(String, i64, Vec<u8>)>,
    /// Elements whose job ended: node, index, the element's final state.
    pub item_states: Vec<(String, i64, NodeState)>,
    /// Elements to submit: node, index, job. Their stored input is dropped (the job has it).
    pub item_jobs: Vec<(String, i64, NewJob)>,
    /// Run events: node and run state changes.
    pub events: Vec<NewEvent>,
}

impl RunChanges {
    pub fn is_empty(&self) -> bool {
        self.state.is_none()
            && self.nodes.is_empty()
            && self.node_jobs.is_empty()
            && self.new_items.is_empty()
            && self.item_states.is_empty()
            && self.item_jobs.is_empty()
            && self.events.is_empty()
    }
}

/// One entry of a run's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEvent {
    pub run_id: RunId,
    pub seq: i64,
    pub kind: String,
    pub data: Value,
    pub at: i64,
}

/// What a process reports of itself every few seconds ([`QueueStore::report_activity`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivityReport {
    pub node: String,
    /// Its slots, and how many run an attempt now (0 and 0 for an API without workers).
    pub slots: u64,
    pub busy: u64,
    /// The jobs it ended since its last report, by minute.
    pub minutes: Vec<MinuteEnds>,
}

/// Jobs ended in one minute, by final state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct MinuteEnds {
    /// The minute's start (ms since the epoch).
    pub minute: i64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

/// A process as it last reported itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct NodeActivity {
    pub node: String,
    pub slots: u64,
    pub busy: u64,
    /// When it last reported (ms since the epoch).
    pub seen_at: i64,
}

/// The installation's recent activity ([`JobStore::activity`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activity {
    /// Jobs ended per minute, summed over the nodes, oldest first; minutes without an end
    /// are left out.
    pub minutes: Vec<MinuteEnds>,
    /// The processes that reported recently, by name.
    pub nodes: Vec<NodeActivity>,
}
