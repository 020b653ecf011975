//! The workflow engine: steps runs forward as their nodes' jobs end.
//!
//! A step reads a run (its nodes, their jobs' states, the elements still running), decides
//! what follows ([`plan`](super::plan::plan), a pure function, given what it asks to read) and
//! writes it in one transaction that also submits the jobs it
//! starts, if nobody stepped the run in between (the run's `rev`). Everything the engine knows
//! is in the store, so after a crash the next step picks up where the last committed one left
//! off: a node whose job was submitted keeps that job, and a finished node never runs again.
//!
//! What wakes the engine: the store's notices for the jobs of runs it follows (a job's end),
//! a run being created or asked to cancel, its own start (every unfinished run is stepped once),
//! and a periodic scan ([`WorkflowStore::runs_to_advance`])
//! that also catches runs stepped by other nodes and passed deadlines.
//!
//! [`WorkflowStore::runs_to_advance`]: crate::store::WorkflowStore::runs_to_advance

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::definition::Validated;
use super::plan::{Admission, Plan, RunData, Step, Wanted, plan};
use super::service::WorkflowService;
use crate::service::ServiceError;
use crate::store::{
    JobId, NewEvent, NodeState, Notice, RunChanges, RunId, RunSnapshot, RunState, StoreError,
    now_ms,
};

/// How often the engine scans for runs to step even without a notice.
const SCAN_EVERY: Duration = Duration::from_millis(500);

/// The running engine; [`Engine::shutdown`] stops it.
pub struct Engine {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Engine {
    /// Stops the engine after the step it is in. Everything it did is in the store.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Starts the engine on the current tokio runtime. One per `wasmjobs serve`; any number may
/// share a store.
pub fn start(service: WorkflowService) -> Engine {
    let notices = service.store().subscribe();
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_engine(service, notices, stop.clone()));
    Engine { stop, task }
}

/// The jobs of runs this engine follows, to know which notices concern it.
#[derive(Default)]
struct Following {
    job_run: HashMap<JobId, RunId>,
    run_jobs: HashMap<RunId, Vec<JobId>>,
}

impl Following {
    /// Follows `jobs` for `run`, instead of what it followed before.
    fn follow(&mut self, run: RunId, jobs: Vec<JobId>) {
        for j in self.run_jobs.remove(&run).unwrap_or_default() {
            self.job_run.remove(&j);
        }
        if !jobs.is_empty() {
            for &j in &jobs {
                self.job_run.insert(j, run);
            }
            self.run_jobs.insert(run, jobs);
        }
    }
}

async fn run_engine(
    service: WorkflowService,
    mut notices: broadcast::Receiver<Notice>,
    shutdown: CancellationToken,
) {
    let mut following = Following::default();
    let mut due: BTreeSet<RunId> = BTreeSet::new();
    // Step every run that is not finished once: after a restart this follows their jobs again
    // and settles whatever changed while no engine ran.
    // (The scan's first tick is immediate, so the loop below steps them at once.)
    match service.runs().active_runs().await {
        Ok(runs) => due.extend(runs),
        Err(e) => tracing::warn!("workflow engine: cannot list active runs: {e}"),
    }
    let mut scan = tokio::time::interval(SCAN_EVERY);
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut full_scan = false;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = scan.tick() => full_scan = true,
            n = notices.recv() => match n {
                Ok(n) => take(n, &following, &mut due),
                Err(broadcast::error::RecvError::Lagged(_)) => full_scan = true,
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
        // Whatever else arrived meanwhile, without waiting.
        loop {
            match notices.try_recv() {
                Ok(n) => take(n, &following, &mut due),
                Err(broadcast::error::TryRecvError::Lagged(_)) => full_scan = true,
                Err(_) => break,
            }
        }
        if full_scan {
            match service.runs().runs_to_advance(now_ms()).await {
                Ok(runs) => due.extend(runs),
                Err(e) => {
                    crate::throttle::warn(format!("workflow engine: cannot scan for runs: {e}"))
                }
            }
        }
        while let Some(run) = due.pop_first() {
            if shutdown.is_cancelled() {
                return;
            }
            let step = tracing::debug_span!("workflow_step", run);
            if let Err(e) =
                tracing::Instrument::instrument(advance(&service, run, &mut following), step).await
            {
                tracing::warn!("workflow run {run}: step failed (retried on the next scan): {e}");
            }
        }
    }
}

fn take(n: Notice, following: &Following, due: &mut BTreeSet<RunId>) {
    match n {
        Notice::Ended(job) => {
            if let Some(&run) = following.job_run.get(&job) {
                due.insert(run);
            }
        }
        Notice::RunRequest(run) => {
            due.insert(run);
        }
        Notice::JobsAvailable | Notice::Events(_) | Notice::Run(_) => {}
    }
}

/// Steps one run until nothing more can happen before one of its jobs ends.
async fn advance(
    service: &WorkflowService,
    run: RunId,
    following: &mut Following,
) -> Result<(), ServiceError> {
    let (store, runs) = (service.store(), service.runs());
    for _ in 0..20 {
        let Some(snap) = runs.get_run(run).await? else {
            following.follow(run, Vec::new());
            return Ok(());
        };
        if snap.run.state.is_final() {
            following.follow(run, Vec::new());
            return Ok(());
        }
        let def = match service
            .definition(&snap.run.workflow, Some(snap.run.version))
            .await
        {
            Ok((_, def)) => def,
            // The definition the run pinned is gone or no longer valid: the run cannot go on,
            // and says why (instead of being retried for ever).
            Err(ServiceError::Store(
                e @ (StoreError::NotFound { .. } | StoreError::Corrupt(_)),
            )) => {
                let error = format!("the run's definition cannot be used: {e}");
                let changes = RunChanges {
                    state: Some((RunState::Failed, Some(error.clone()))),
                    events: vec![NewEvent {
                        kind: "run",
                        data: json!({ "state": RunState::Failed, "error": error }),
                    }],
                    ..RunChanges::default()
                };
                match runs.apply_run(run, snap.run.rev, changes, now_ms()).await? {
                    Some(_) => {
                        report_end(run, RunState::Failed, Some(&error));
                        for job in snap.outstanding_jobs() {
                            let _ = store.cancel(job, now_ms()).await;
                        }
                        following.follow(run, Vec::new());
                        return Ok(());
                    }
                    None => continue,
                }
            }
            Err(e) => return Err(e),
        };
        let now = now_ms();
        let Plan { changes, cancel } = decide(service, &def, &snap, now).await?;
        let mut jobs: Vec<JobId> = snap.outstanding_jobs();
        if !changes.is_empty() {
            let finishing = changes.state.clone().filter(|(s, _)| s.is_final());
            let nodes_ended: Vec<(NodeState, i64)> = changes
                .nodes
                .iter()
                .filter(|n| {
                    n.state.is_final()
                        && !snap
                            .nodes
                            .iter()
                            .any(|old| old.name == n.name && old.state.is_final())
                })
                .map(|n| {
                    (
                        n.state,
                        n.finished_at.unwrap_or(now) - n.started_at.unwrap_or(now),
                    )
                })
                .collect();
            match runs.apply_run(run, snap.run.rev, changes, now).await? {
                None => continue, // stepped by someone else: read it again
                Some(ids) => {
                    for (state, took) in nodes_ended {
                        crate::telemetry::node_ended(state, took);
                    }
                    if let Some((state, error)) = &finishing {
                        report_end(run, *state, error.as_deref());
                    }
                    let finishing = finishing.is_some();
                    jobs.extend(ids);
                    if finishing {
                        jobs.clear();
                    }
                }
            }
        }
        for job in cancel {
            match store.cancel(job, now).await {
                Ok(_) | Err(StoreError::Conflict(_) | StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        following.follow(run, jobs);
        return Ok(());
    }
    Err(ServiceError::Invalid(format!(
        "workflow run {run}: gave up stepping after 20 conflicting steps"
    )))
}

/// A run this engine stepped ended: counted, and logged at info unless it succeeded.
fn report_end(run: RunId, state: RunState, error: Option<&str>) {
    crate::telemetry::run_ended(state);
    if state == RunState::Succeeded {
        tracing::debug!(run, "workflow run {run} succeeded");
    } else {
        tracing::info!(
            run,
            error = error.unwrap_or(""),
            "workflow run {run} ended {state}"
        );
    }
}

/// Decides the run's next step ([`plan`]), reading what it needs for it: a few passes at most,
/// since each pass asks for all it is missing and what it was given stays true.
async fn decide(
    service: &WorkflowService,
    def: &Validated,
    snap: &RunSnapshot,
    now: i64,
) -> Result<Plan, ServiceError> {
    let (store, runs) = (service.store(), service.runs());
    let admission = Admission {
        policy: &service.jobs.policy,
        dirs: &service.jobs.allowed_dirs,
    };
    let mut data = RunData::default();
    for _ in 0..4 {
        let wanted = match plan(def, snap, &data, admission, now) {
            Step::Decided(plan) => return Ok(plan),
            Step::Needs(wanted) => wanted,
        };
        for w in wanted {
            match w {
                Wanted::JobOutput(job) => {
                    let out = store.job_output(job).await?.unwrap_or_default();
                    data.job_outputs.insert(job, out);
                }
                Wanted::ItemOutputs(node) => {
                    let outs = runs.item_outputs(snap.run.id, &node).await?;
                    data.item_outputs.insert(node, outs);
                }
                Wanted::PendingItems { node, from, limit } => {
                    let items = runs.pending_items(snap.run.id, &node, from, limit).await?;
                    data.pending_items.insert(node, items);
                }
            }
        }
    }
    Err(ServiceError::Invalid(format!(
        "workflow run {}: its step still needed more data after four reads",
        snap.run.id
    )))
}
