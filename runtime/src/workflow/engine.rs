//! The workflow engine: steps runs forward as their nodes' jobs end.
//!
//! A step reads a run (its nodes, their jobs' states, the elements still running), decides
//! what follows ([`plan`]) and writes it in one transaction that also submits the jobs it
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

use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::definition::{Condition, Validated};
use super::service::{WorkflowService, output_value};
use crate::service::ServiceError;
use crate::store::{
    JobId, JobState, NewEvent, NewJob, NodeRecord, NodeState, Notice, RunChanges, RunId,
    RunSnapshot, RunState, StoreError, now_ms,
};

/// Most elements one `for_each` node fans out over.
pub const MAX_ELEMENTS: usize = 100_000;

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
    match service.store().active_runs().await {
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
            match service.store().runs_to_advance(now_ms()).await {
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
            if let Err(e) = advance(&service, run, &mut following).await {
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
    let store = service.store();
    for _ in 0..20 {
        let Some(snap) = store.get_run(run).await? else {
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
                match store
                    .apply_run(run, snap.run.rev, changes, now_ms())
                    .await?
                {
                    Some(_) => {
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
        let Plan { changes, cancel } = plan(service, &def, &snap, now).await?;
        let mut jobs: Vec<JobId> = snap.outstanding_jobs();
        if !changes.is_empty() {
            let finishing = changes.state.as_ref().is_some_and(|(s, _)| s.is_final());
            match store.apply_run(run, snap.run.rev, changes, now).await? {
                None => continue, // stepped by someone else: read it again
                Some(ids) => {
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

/// One step: what to write, and which jobs to stop once it is written.
struct Plan {
    changes: RunChanges,
    cancel: Vec<JobId>,
}

fn node_event(n: &NodeRecord) -> NewEvent {
    let mut data = json!({ "node": n.name, "state": n.state });
    if let Some(e) = &n.error {
        data["error"] = json!(e);
    }
    if let Some(j) = n.job_id {
        data["job"] = json!(j);
    }
    if let Some(t) = n.items_total {
        data["items"] = json!({ "total": t, "done": n.items_done, "failed": n.items_failed });
    }
    NewEvent { kind: "node", data }
}

/// Decides a run's next step from its snapshot. Reads the outputs it needs (a finished job's
/// output never changes, so reading outside the step's transaction is safe).
async fn plan(
    service: &WorkflowService,
    def: &Validated,
    snap: &RunSnapshot,
    now: i64,
) -> Result<Plan, ServiceError> {
    let store = service.store();
    let run = &snap.run;
    let mut ch = RunChanges::default();
    let mut cancel = Vec::new();
    let mut nodes: HashMap<String, NodeRecord> = snap
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.clone()))
        .collect();
    let mut changed: BTreeSet<String> = BTreeSet::new();
    let spec = |name: &str| def.node(name);

    // A cancel request or a passed deadline stops the run: nothing new starts.
    let mut run_state = run.state;
    let mut run_error: Option<String> = None;
    if run_state == RunState::Running {
        if run.cancel_requested {
            run_state = RunState::Cancelling;
            ch.events.push(NewEvent {
                kind: "run",
                data: json!({ "state": run_state, "reason": "cancel requested" }),
            });
        } else if run.deadline_at.is_some_and(|d| d <= now) {
            run_state = RunState::Cancelling;
            let e = format!(
                "the run's timeout ({}) passed",
                def.definition.timeout.as_deref().unwrap_or("?")
            );
            ch.events.push(NewEvent {
                kind: "run",
                data: json!({ "state": run_state, "reason": e }),
            });
            run_error = Some(e);
        }
    }
    let stopping = run_state == RunState::Cancelling;

    // Plain nodes whose job ended.
    for n in nodes.values_mut() {
        if n.state != NodeState::Running || n.items_total.is_some() {
            continue;
        }
        match (n.job_id, n.job_state) {
            (Some(job), Some(s)) if s.is_final() => {
                n.state = s.into();
                n.finished_at = Some(now);
                if s != JobState::Succeeded {
                    n.error = Some(match &n.job_error {
                        Some(e) => format!("job {job} {s}: {e}"),
                        None => format!("job {job} {s}"),
                    });
                }
                changed.insert(n.name.clone());
            }
            (Some(job), Some(_)) if stopping => cancel.push(job),
            _ => {}
        }
    }

    // Elements whose job ended; those still running, per node.
    let mut still_running: HashMap<&str, Vec<JobId>> = HashMap::new();
    let mut first_failure: HashMap<&str, String> = HashMap::new();
    for item in &snap.running_items {
        if !item.job_state.is_final() {
            still_running
                .entry(item.node.as_str())
                .or_default()
                .push(item.job_id);
            continue;
        }
        let state: NodeState = item.job_state.into();
        ch.item_states.push((item.node.clone(), item.idx, state));
        if let Some(n) = nodes.get_mut(&item.node) {
            n.items_done += 1;
            if state != NodeState::Succeeded {
                n.items_failed += 1;
                first_failure.entry(item.node.as_str()).or_insert_with(|| {
                    format!(
                        "element {} (job {}) {}{}",
                        item.idx,
                        item.job_id,
                        item.job_state,
                        item.job_error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    )
                });
            }
            changed.insert(n.name.clone());
        }
    }

    // for_each nodes: fail fast, stop, refill up to the concurrency cap, or gather.
    let mut submitted_items = 0usize;
    for n in nodes.values_mut() {
        let (Some(total), Some(fe)) = (
            n.items_total,
            spec(&n.name).and_then(|s| s.for_each.as_ref()),
        ) else {
            continue;
        };
        let running = still_running
            .get(n.name.as_str())
            .cloned()
            .unwrap_or_default();
        if n.state.is_final() {
            // Failed fast or cancelled earlier: make sure the rest stop.
            cancel.extend(running);
            continue;
        }
        if n.state != NodeState::Running {
            continue;
        }
        if n.items_failed > 0 && fe.on_failure == super::OnFailure::FailFast {
            n.state = NodeState::Failed;
            n.finished_at = Some(now);
            n.error = first_failure.get(n.name.as_str()).cloned();
            cancel.extend(running);
            changed.insert(n.name.clone());
            continue;
        }
        if stopping {
            cancel.extend(running.iter().copied());
            if running.is_empty() {
                n.state = NodeState::Cancelled;
                n.finished_at = Some(now);
                changed.insert(n.name.clone());
            }
            continue;
        }
        let free = i64::from(fe.concurrency) - running.len() as i64;
        let left = total - n.items_next;
        if free > 0 && left > 0 {
            let items = store
                .pending_items(run.id, &n.name, n.items_next, free.min(left))
                .await?;
            for (idx, input) in items {
                let job = node_job(service, def, snap, &n.name, &n.module, input);
                ch.item_jobs.push((n.name.clone(), idx, job));
                n.items_next = idx + 1;
                submitted_items += 1;
            }
            changed.insert(n.name.clone());
        }
        if n.items_done == total {
            if n.items_failed > 0 {
                n.state = NodeState::Failed;
                n.error = Some(format!(
                    "{} of {total} elements failed; the first: {}",
                    n.items_failed,
                    first_failure
                        .get(n.name.as_str())
                        .cloned()
                        .unwrap_or_default()
                ));
            } else {
                let outputs = store.item_outputs(run.id, &n.name).await?;
                let array: Vec<Value> = outputs
                    .iter()
                    .map(|o| output_value(o.as_deref().unwrap_or_default()))
                    .collect();
                n.output = Some(Value::Array(array).to_string().into_bytes());
                n.state = NodeState::Succeeded;
            }
            n.finished_at = Some(now);
            changed.insert(n.name.clone());
        }
    }

    // Pending nodes, in running order: each whose upstreams all ended starts or is skipped.
    for &i in &def.order {
        let d = &def.definition.nodes[i];
        let Some(state) = nodes.get(&d.name).map(|n| n.state) else {
            continue;
        };
        if state != NodeState::Pending {
            continue;
        }
        if stopping {
            if let Some(n) = nodes.get_mut(&d.name) {
                n.state = NodeState::Cancelled;
                n.finished_at = Some(now);
            }
            changed.insert(d.name.clone());
            continue;
        }
        let ups: Vec<NodeState> = d
            .needs
            .iter()
            .map(|u| nodes.get(u).map_or(NodeState::Pending, |n| n.state))
            .collect();
        if ups.iter().any(|s| !s.is_final()) {
            continue;
        }
        let all_ok = ups.iter().all(|s| *s == NodeState::Succeeded);
        let any_failed = ups.contains(&NodeState::Failed);
        let mut input: Option<Vec<u8>> = None;
        let runs = match &def.conditions[i] {
            Condition::Success => all_ok,
            Condition::Failure => any_failed,
            Condition::Always => true,
            Condition::Predicate(p) => {
                if all_ok {
                    let bytes = node_input(service, run, &nodes, &d.needs).await?;
                    let holds = p.eval(&output_value(&bytes));
                    input = Some(bytes);
                    holds
                } else {
                    false
                }
            }
        };
        let Some(n) = nodes.get(&d.name).cloned() else {
            continue;
        };
        let mut n = n;
        changed.insert(d.name.clone());
        if !runs {
            n.state = NodeState::Skipped;
            n.finished_at = Some(now);
            nodes.insert(d.name.clone(), n);
            continue;
        }
        n.started_at = Some(now);
        match &d.for_each {
            // One upstream whose output is its job's: the job reads it from there when it
            // starts, instead of a copy here.
            None if let Some(from) = passed_on(&nodes, &d.needs) => {
                let mut job = node_job(service, def, snap, &d.name, &n.module, Vec::new());
                job.input_from = Some(from);
                n.state = NodeState::Running;
                ch.node_jobs.push((d.name.clone(), job));
            }
            None => {
                let input = match input {
                    Some(i) => i,
                    None => node_input(service, run, &nodes, &d.needs).await?,
                };
                let job = node_job(service, def, snap, &d.name, &n.module, input);
                if let Err(e) = service.jobs.policy.admit(
                    &job.limits,
                    job.input.len(),
                    &job.grants,
                    &service.jobs.allowed_dirs,
                ) {
                    n.state = NodeState::Failed;
                    n.error = Some(format!("cannot submit the node's job: {e}"));
                    n.finished_at = Some(now);
                } else {
                    n.state = NodeState::Running;
                    ch.node_jobs.push((d.name.clone(), job));
                }
            }
            Some(fe) => match elements(
                &match input {
                    Some(i) => i,
                    None => node_input(service, run, &nodes, &d.needs).await?,
                },
                &fe.items,
            ) {
                Err(e) => {
                    n.state = NodeState::Failed;
                    n.error = Some(e);
                    n.finished_at = Some(now);
                }
                Ok(items) if items.is_empty() => {
                    n.items_total = Some(0);
                    n.output = Some(b"[]".to_vec());
                    n.state = NodeState::Succeeded;
                    n.finished_at = Some(now);
                }
                Ok(items) => {
                    let total = items.len() as i64;
                    let first = i64::from(fe.concurrency).min(total);
                    n.items_total = Some(total);
                    n.items_next = first;
                    n.state = NodeState::Running;
                    for (idx, item) in items.into_iter().enumerate() {
                        let idx = idx as i64;
                        let bytes = item.to_string().into_bytes();
                        if idx < first {
                            let job = node_job(service, def, snap, &d.name, &n.module, bytes);
                            ch.new_items.push((d.name.clone(), idx, Vec::new()));
                            ch.item_jobs.push((d.name.clone(), idx, job));
                            submitted_items += 1;
                        } else {
                            ch.new_items.push((d.name.clone(), idx, bytes));
                        }
                    }
                }
            },
        }
        nodes.insert(d.name.clone(), n);
    }

    // The run ends once every node ended and no job of it still runs.
    let all_final = nodes.values().all(|n| n.state.is_final());
    let jobs_left = still_running.values().map(Vec::len).sum::<usize>()
        + submitted_items
        + nodes
            .values()
            .filter(|n| n.state == NodeState::Running && n.items_total.is_none())
            .count();
    if all_final && jobs_left == 0 {
        let failed: Vec<&NodeRecord> = def
            .order
            .iter()
            .filter_map(|&i| nodes.get(&def.definition.nodes[i].name))
            .filter(|n| n.state == NodeState::Failed)
            .collect();
        let (state, error) = if let Some(e) = run_error.clone().or_else(|| run.error.clone()) {
            (RunState::Failed, Some(e))
        } else if stopping {
            (RunState::Cancelled, None)
        } else if let Some(f) = failed.first() {
            let e = format!(
                "node {:?} failed{}",
                f.name,
                f.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
            (RunState::Failed, Some(e))
        } else {
            (RunState::Succeeded, None)
        };
        run_state = state;
        run_error = error;
    }

    // Events in running order, so that a node's end comes before its successors' start.
    for &i in &def.order {
        let name = &def.definition.nodes[i].name;
        if changed.contains(name)
            && let Some(n) = nodes.remove(name)
        {
            ch.events.push(node_event(&n));
            ch.nodes.push(n);
        }
    }
    if run_state != run.state {
        if run_state.is_final() {
            ch.events.push(NewEvent {
                kind: "run",
                data: json!({ "state": run_state, "error": run_error }),
            });
        }
        ch.state = Some((run_state, run_error));
    }
    Ok(Plan {
        changes: ch,
        cancel,
    })
}

/// A node's input: the run's input for a root; its upstream's output for one upstream; an
/// object keyed by upstream name for several. An upstream that did not succeed contributes
/// `{"state": …, "error": …}` (a node that runs on failure sees why).
async fn node_input(
    service: &WorkflowService,
    run: &crate::store::RunRecord,
    nodes: &HashMap<String, NodeRecord>,
    needs: &[String],
) -> Result<Vec<u8>, ServiceError> {
    let one = |n: &NodeRecord| json!({ "state": n.state, "error": n.error });
    match needs {
        [] => Ok(run.input.clone()),
        [up] => match nodes.get(up) {
            Some(n) if n.state == NodeState::Succeeded => service.node_output_bytes(n).await,
            Some(n) => Ok(one(n).to_string().into_bytes()),
            None => Ok(Vec::new()),
        },
        several => {
            let mut object = serde_json::Map::new();
            for up in several {
                let v = match nodes.get(up) {
                    Some(n) if n.state == NodeState::Succeeded => service.node_output(n).await?,
                    Some(n) => one(n),
                    None => Value::Null,
                };
                object.insert(up.clone(), v);
            }
            Ok(Value::Object(object).to_string().into_bytes())
        }
    }
}

/// The job whose output a node with `needs` takes as its input unchanged: its one upstream's,
/// when that succeeded and is a plain node (a `for_each` node's gathered output lives in the
/// run, not in a job).
fn passed_on(nodes: &HashMap<String, NodeRecord>, needs: &[String]) -> Option<JobId> {
    match needs {
        [up] => nodes
            .get(up)
            .filter(|n| n.state == NodeState::Succeeded && n.items_total.is_none())
            .and_then(|n| n.job_id),
        _ => None,
    }
}

/// The array a `for_each` node fans out over: its input, or the part `pointer` names.
fn elements(input: &[u8], pointer: &str) -> Result<Vec<Value>, String> {
    let value: Value = serde_json::from_slice(input)
        .map_err(|e| format!("for_each needs a JSON input, and this one is not JSON: {e}"))?;
    let found = if pointer.is_empty() {
        Some(value)
    } else {
        value.pointer(pointer).cloned()
    };
    match found {
        Some(Value::Array(items)) if items.len() > MAX_ELEMENTS => Err(format!(
            "for_each over {} elements: at most {MAX_ELEMENTS} per node",
            items.len()
        )),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(format!(
            "for_each.items {:?} is not an array in the node's input: found {}",
            if pointer.is_empty() {
                "(the input)"
            } else {
                pointer
            },
            kind(&other)
        )),
        None => Err(format!(
            "for_each.items {pointer:?} is missing from the node's input"
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The job of a node (or one element of it): the pinned module, the node's limits and retry
/// policy, the run's deadline, and the run as its opaque reference.
fn node_job(
    service: &WorkflowService,
    def: &Validated,
    snap: &RunSnapshot,
    node: &str,
    module: &str,
    input: Vec<u8>,
) -> NewJob {
    let spec = def.node(node);
    NewJob {
        module_digest: module.to_string(),
        input,
        limits: spec
            .and_then(|s| s.limits)
            .unwrap_or(service.jobs.policy.defaults),
        retry: spec.and_then(|s| s.retry.clone()).unwrap_or_default(),
        grants: Default::default(),
        priority: 0,
        run_at: None,
        idempotency_key: None,
        deadline_at: snap.run.deadline_at,
        workflow_ref: Some(snap.run.id.to_string()),
        input_from: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_come_from_the_input_or_a_pointer_and_are_bounded() {
        assert_eq!(elements(b"[1, 2]", ""), Ok(vec![json!(1), json!(2)]));
        assert_eq!(
            elements(br#"{"a": {"b": ["x"]}}"#, "/a/b"),
            Ok(vec![json!("x")])
        );
        let e = elements(br#"{"a": 3}"#, "/a").expect_err("not an array");
        assert!(
            e.contains("\"/a\" is not an array") && e.contains("a number"),
            "{e}"
        );
        let e = elements(br#"{"a": 3}"#, "/b").expect_err("missing");
        assert!(e.contains("\"/b\" is missing"), "{e}");
        let e = elements(b"not json", "").expect_err("not json");
        assert!(e.contains("not JSON"), "{e}");
        let big = serde_json::to_vec(&vec![0; MAX_ELEMENTS + 1]).expect("json");
        let e = elements(&big, "").expect_err("too many");
        assert!(e.contains(&format!("at most {MAX_ELEMENTS}")), "{e}");
    }

    #[test]
    fn outputs_become_json_values() {
        assert_eq!(output_value(b""), Value::Null);
        assert_eq!(output_value(br#"{"n": 1}"#), json!({"n": 1}));
        assert_eq!(output_value(b"plain text"), json!("plain text"));
    }
}
