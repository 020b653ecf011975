//! The records the store keeps — modules, jobs, attempts, events — and the inputs to its
//! operations. Times are milliseconds since the Unix epoch.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use wasmjobs_host::{Grants, Limits, Outcome};

use super::policy::RetryPolicy;

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
}

/// A job to insert. Validated by the job service before it gets here.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub module_digest: String,
    pub input: Vec<u8>,
    pub limits: Limits,
    pub retry: RetryPolicy,
    pub grants: Grants,
    pub priority: i64,
    /// Not before this time; `None` is now.
    pub run_at: Option<i64>,
    pub idempotency_key: Option<String>,
    /// Overall deadline: no attempt starts after it.
    pub deadline_at: Option<i64>,
    /// Opaque reference for a service built on jobs (workflows).
    pub workflow_ref: Option<String>,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: JobId,
    pub module: String,
    pub state: JobState,
    pub priority: i64,
    pub run_at: i64,
    #[serde(skip)]
    pub input: Vec<u8>,
    pub limits: Limits,
    pub retry: RetryPolicy,
    pub grants: Grants,
    pub idempotency_key: Option<String>,
    pub attempts: u32,
    pub deadline_at: Option<i64>,
    pub worker: Option<String>,
    pub lease_until: Option<i64>,
    pub cancel_requested: bool,
    pub outcome: Option<Outcome>,
    #[serde(skip)]
    pub output: Option<Vec<u8>>,
    pub error: Option<String>,
    pub workflow_ref: Option<String>,
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
            priority: new.priority,
            run_at,
            input: new.input,
            limits: new.limits,
            retry: new.retry,
            grants: new.grants,
            idempotency_key: new.idempotency_key,
            attempts: 0,
            deadline_at: new.deadline_at,
            worker: None,
            lease_until: None,
            cancel_requested: false,
            outcome: None,
            output: None,
            error: None,
            workflow_ref: new.workflow_ref,
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
    pub input: Vec<u8>,
    pub limits: Limits,
    pub grants: Grants,
    pub attempt: u32,
    pub deadline_at: Option<i64>,
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
    /// Log and progress events not yet written.
    pub events: Vec<NewEvent>,
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
            events: Vec::new(),
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
    pub limit: u32,
    pub cursor: Option<JobId>,
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
    pub target: Value,
    pub next_run_at: i64,
    pub created_at: i64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
