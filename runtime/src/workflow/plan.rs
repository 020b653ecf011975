//! A workflow run's next step, decided by a pure function: [`plan`] takes the definition, the
//! run as it is stored (its snapshot), what was read for it ([`RunData`]: outputs, elements)
//! and the time, and says what to write — node states, jobs to submit, events, the run's end —
//! and which jobs to stop. It reads nothing and writes nothing: when it needs an output or
//! elements it was not given, it says which ([`Step::Needs`]) and the engine reads them and
//! asks again. So every rule of a run (conditions, skips, fan-out and fan-in, fail-fast,
//! cancel, timeout) is tested here on plain values, and the engine only moves data.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Value, json};
use wasmjobs_host::AllowedDirs;

use super::definition::{Condition, Validated};
use super::service::output_value;
use crate::admission::AdmissionPolicy;
use crate::store::{
    JobId, JobState, NewEvent, NewJob, NodeRecord, NodeState, RunChanges, RunSnapshot, RunState,
};

/// Most elements one `for_each` node fans out over.
pub const MAX_ELEMENTS: usize = 100_000;

/// One step: what to write, and which jobs to stop once it is written.
#[derive(Debug)]
pub struct Plan {
    pub changes: RunChanges,
    pub cancel: Vec<JobId>,
}

/// What a step may need to know beyond the run's snapshot: stored outputs and `for_each`
/// elements. A finished job's output never changes, so what was read for one pass holds for
/// the next.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunData {
    /// Outputs of finished jobs (upstreams of nodes about to start), by job.
    pub job_outputs: HashMap<JobId, Vec<u8>>,
    /// Every element's output of a `for_each` node about to gather them, in order.
    pub item_outputs: HashMap<String, Vec<Option<Vec<u8>>>>,
    /// The next pending elements (index, input) of a `for_each` node with free slots.
    pub pending_items: HashMap<String, Vec<(i64, Vec<u8>)>>,
}

/// Something a step needs that [`RunData`] did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    JobOutput(JobId),
    ItemOutputs(String),
    PendingItems { node: String, from: i64, limit: i64 },
}

/// What deciding a step came to: the step, or what must be read before it can be decided.
#[derive(Debug)]
pub enum Step {
    Decided(Plan),
    Needs(Vec<Wanted>),
}

/// What a step checks new jobs against, and what they get when their node asks for nothing.
#[derive(Debug, Clone, Copy)]
pub struct Admission<'a> {
    pub policy: &'a AdmissionPolicy,
    pub dirs: &'a AllowedDirs,
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

/// Decides a run's next step from its definition, its snapshot, what was read for it (`data`)
/// and the time: a pure function. When the step needs an output or elements that `data` does
/// not hold, it says which ([`Step::Needs`]); the caller reads them and decides again.
pub fn plan(
    def: &Validated,
    snap: &RunSnapshot,
    data: &RunData,
    admission: Admission<'_>,
    now: i64,
) -> Step {
    let run = &snap.run;
    let mut wanted: Vec<Wanted> = Vec::new();
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
            let Some(items) = data.pending_items.get(&n.name) else {
                wanted.push(Wanted::PendingItems {
                    node: n.name.clone(),
                    from: n.items_next,
                    limit: free.min(left),
                });
                continue;
            };
            for (idx, input) in items.iter().cloned() {
                let job = node_job(admission, def, snap, &n.name, &n.module, input);
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
                let Some(outputs) = data.item_outputs.get(&n.name) else {
                    wanted.push(Wanted::ItemOutputs(n.name.clone()));
                    continue;
                };
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
                    let Some(bytes) = node_input(run, &nodes, &d.needs, data, &mut wanted) else {
                        continue;
                    };
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
                let mut job = node_job(admission, def, snap, &d.name, &n.module, Vec::new());
                job.input_from = Some(from);
                n.state = NodeState::Running;
                ch.node_jobs.push((d.name.clone(), job));
            }
            None => {
                let input = match input {
                    Some(i) => i,
                    None => match node_input(run, &nodes, &d.needs, data, &mut wanted) {
                        Some(i) => i,
                        None => continue,
                    },
                };
                let job = node_job(admission, def, snap, &d.name, &n.module, input);
                if let Err(e) = admission.policy.admit(
                    &job.limits,
                    job.input.len(),
                    &job.grants,
                    admission.dirs,
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
                    None => match node_input(run, &nodes, &d.needs, data, &mut wanted) {
                        Some(i) => i,
                        None => continue,
                    },
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
                            let job = node_job(admission, def, snap, &d.name, &n.module, bytes);
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
    if !wanted.is_empty() {
        return Step::Needs(wanted);
    }
    Step::Decided(Plan {
        changes: ch,
        cancel,
    })
}

/// A node's input: the run's input for a root; its upstream's output for one upstream; an
/// object keyed by upstream name for several. An upstream that did not succeed contributes
/// `{"state": …, "error": …}` (a node that runs on failure sees why). `None`, with what is
/// missing added to `wanted`, when an upstream's output was not read yet.
fn node_input(
    run: &crate::store::RunRecord,
    nodes: &HashMap<String, NodeRecord>,
    needs: &[String],
    data: &RunData,
    wanted: &mut Vec<Wanted>,
) -> Option<Vec<u8>> {
    let one = |n: &NodeRecord| json!({ "state": n.state, "error": n.error });
    let mut output_of = |n: &NodeRecord| -> Option<Vec<u8>> {
        if let Some(out) = &n.output {
            return Some(out.clone());
        }
        let Some(job) = n.job_id else {
            return Some(Vec::new());
        };
        match data.job_outputs.get(&job) {
            Some(out) => Some(out.clone()),
            None => {
                wanted.push(Wanted::JobOutput(job));
                None
            }
        }
    };
    match needs {
        [] => Some(run.input.clone()),
        [up] => match nodes.get(up) {
            Some(n) if n.state == NodeState::Succeeded => output_of(n),
            Some(n) => Some(one(n).to_string().into_bytes()),
            None => Some(Vec::new()),
        },
        several => {
            let mut object = serde_json::Map::new();
            let mut missing = false;
            for up in several {
                let v = match nodes.get(up) {
                    Some(n) if n.state == NodeState::Succeeded => match output_of(n) {
                        Some(bytes) => output_value(&bytes),
                        None => {
                            missing = true;
                            Value::Null
                        }
                    },
                    Some(n) => one(n),
                    None => Value::Null,
                };
                object.insert(up.clone(), v);
            }
            (!missing).then(|| Value::Object(object).to_string().into_bytes())
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
    admission: Admission<'_>,
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
            .unwrap_or(admission.policy.defaults),
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
    use crate::store::{ItemRecord, RunRecord};
    use crate::workflow::Definition;

    const NOW: i64 = 1_000_000;

    /// A run of `yaml` as stored, every node in the state given (default `pending`).
    struct Run {
        def: Validated,
        snap: RunSnapshot,
        data: RunData,
    }

    impl Run {
        fn of(yaml: &str) -> Run {
            let def = Definition::parse(yaml)
                .and_then(Definition::validate)
                .expect("valid definition");
            let nodes = def
                .definition
                .nodes
                .iter()
                .map(|n| NodeRecord {
                    name: n.name.clone(),
                    module: format!("sha256:{}", n.name),
                    state: NodeState::Pending,
                    job_id: None,
                    items_total: None,
                    items_next: 0,
                    items_done: 0,
                    items_failed: 0,
                    output: None,
                    error: None,
                    started_at: None,
                    finished_at: None,
                    job_state: None,
                    job_error: None,
                })
                .collect();
            let run = RunRecord {
                id: 7,
                workflow: def.definition.name.clone(),
                version: 1,
                state: RunState::Running,
                input: br#"{"n": 0}"#.to_vec(),
                error: None,
                cancel_requested: false,
                deadline_at: None,
                rev: 1,
                created_at: 0,
                updated_at: 0,
                finished_at: None,
            };
            Run {
                def,
                snap: RunSnapshot {
                    run,
                    nodes,
                    running_items: Vec::new(),
                },
                data: RunData::default(),
            }
        }

        fn node(&mut self, name: &str) -> &mut NodeRecord {
            self.snap
                .nodes
                .iter_mut()
                .find(|n| n.name == name)
                .expect("a node of the run")
        }

        /// `name` ran job `job`, which is now in `state`; its output is `output`.
        fn job(&mut self, name: &str, job: JobId, state: JobState, output: &str) -> &mut Self {
            let n = self.node(name);
            n.state = NodeState::Running;
            n.job_id = Some(job);
            n.job_state = Some(state);
            if state == JobState::Failed {
                n.job_error = Some("boom".into());
            }
            self.data
                .job_outputs
                .insert(job, output.as_bytes().to_vec());
            self
        }

        /// `name` ended earlier in `state`.
        fn ended(&mut self, name: &str, state: NodeState) -> &mut Self {
            let n = self.node(name);
            n.state = state;
            n.finished_at = Some(1);
            self
        }

        fn step(&self) -> Plan {
            let policy = AdmissionPolicy::default();
            let dirs = AllowedDirs::default();
            match plan(
                &self.def,
                &self.snap,
                &self.data,
                Admission {
                    policy: &policy,
                    dirs: &dirs,
                },
                NOW,
            ) {
                Step::Decided(plan) => plan,
                Step::Needs(w) => panic!("the step needs {w:?}"),
            }
        }

        fn needs(&self) -> Vec<Wanted> {
            let policy = AdmissionPolicy::default();
            let dirs = AllowedDirs::default();
            match plan(
                &self.def,
                &self.snap,
                &self.data,
                Admission {
                    policy: &policy,
                    dirs: &dirs,
                },
                NOW,
            ) {
                Step::Decided(plan) => panic!("decided without the data: {plan:?}"),
                Step::Needs(w) => w,
            }
        }
    }

    /// Each changed node's new state, in running order.
    fn states(plan: &Plan) -> Vec<(String, NodeState)> {
        plan.changes
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.state))
            .collect()
    }

    /// The nodes the step submits a job for, with each job's input as text.
    fn started(plan: &Plan) -> Vec<(String, String)> {
        plan.changes
            .node_jobs
            .iter()
            .map(|(name, job)| {
                let input = match job.input_from {
                    Some(from) => format!("<output of job {from}>"),
                    None => String::from_utf8_lossy(&job.input).into_owned(),
                };
                (name.clone(), input)
            })
            .collect()
    }

    fn run_state(plan: &Plan) -> Option<RunState> {
        plan.changes.state.as_ref().map(|(s, _)| *s)
    }

    const CHAIN: &str = "name: chain\nnodes:\n  - {name: a, module: m}\n  - {name: b, module: m, needs: [a]}\n  - {name: c, module: m, needs: [b]}\n";
    const DIAMOND: &str = "name: diamond\nnodes:\n  - {name: a, module: m}\n  - {name: b, module: m, needs: [a]}\n  - {name: c, module: m, needs: [a]}\n  - {name: d, module: m, needs: [b, c]}\n";

    #[test]
    fn a_chain_starts_its_root_on_the_run_input_then_passes_each_output_on() {
        let mut run = Run::of(CHAIN);
        let first = run.step();
        assert_eq!(
            started(&first),
            [("a".to_string(), r#"{"n": 0}"#.to_string())]
        );
        assert_eq!(states(&first), [("a".to_string(), NodeState::Running)]);
        assert_eq!(run_state(&first), None);

        run.job("a", 1, JobState::Succeeded, r#"{"n": 1}"#);
        let second = run.step();
        assert_eq!(
            states(&second),
            [
                ("a".to_string(), NodeState::Succeeded),
                ("b".to_string(), NodeState::Running)
            ]
        );
        // One upstream: the job reads its output where it is, without a copy.
        assert_eq!(
            started(&second),
            [("b".to_string(), "<output of job 1>".to_string())]
        );

        run.ended("a", NodeState::Succeeded);
        run.ended("b", NodeState::Succeeded);
        run.job("c", 3, JobState::Succeeded, "{}");
        let last = run.step();
        assert_eq!(run_state(&last), Some(RunState::Succeeded));
        assert!(last.cancel.is_empty());
    }

    #[test]
    fn a_diamond_joins_its_upstreams_outputs_by_name() {
        let mut run = Run::of(DIAMOND);
        run.ended("a", NodeState::Succeeded);
        run.job("b", 2, JobState::Succeeded, r#"{"x": 1}"#);
        run.job("c", 3, JobState::Running, "");
        let waiting = run.step();
        assert_eq!(states(&waiting), [("b".to_string(), NodeState::Succeeded)]);
        assert!(started(&waiting).is_empty(), "d waits for c");

        run.ended("b", NodeState::Succeeded);
        run.job("c", 3, JobState::Succeeded, "plain text");
        let joined = run.step();
        let input: Value = serde_json::from_str(&started(&joined)[0].1).expect("the join is JSON");
        assert_eq!(input, json!({"b": {"x": 1}, "c": "plain text"}));
    }

    #[test]
    fn each_condition_kind_runs_or_skips_its_node() {
        let cases = [
            // (when, upstream outcome, upstream output, runs)
            ("success", JobState::Succeeded, r#"{"score": 1}"#, true),
            ("success", JobState::Failed, "", false),
            ("failure", JobState::Failed, "", true),
            ("failure", JobState::Succeeded, "{}", false),
            ("always", JobState::Failed, "", true),
            ("always", JobState::Cancelled, "", true),
            (
                "/score > 0.5",
                JobState::Succeeded,
                r#"{"score": 0.9}"#,
                true,
            ),
            (
                "/score > 0.5",
                JobState::Succeeded,
                r#"{"score": 0.1}"#,
                false,
            ),
            ("/score > 0.5", JobState::Failed, "", false),
        ];
        for (when, outcome, output, runs) in cases {
            let yaml = format!(
                "name: cond\nnodes:\n  - {{name: a, module: m}}\n  - {{name: b, module: m, needs: [a], when: \"{when}\"}}\n"
            );
            let mut run = Run::of(&yaml);
            run.job("a", 1, outcome, output);
            let plan = run.step();
            let b = plan.changes.nodes.iter().find(|n| n.name == "b");
            let want = if runs {
                NodeState::Running
            } else {
                NodeState::Skipped
            };
            assert_eq!(
                b.map(|n| n.state),
                Some(want),
                "when {when:?} after {outcome}"
            );
            if runs && outcome != JobState::Succeeded {
                // A node that runs on failure sees why.
                let input: Value = serde_json::from_str(&started(&plan)[0].1).expect("json");
                assert_eq!(input["state"], json!(NodeState::from(outcome)), "{input}");
            }
        }
    }

    #[test]
    fn a_skip_cascades_and_a_failed_node_fails_the_run() {
        let mut run = Run::of(CHAIN);
        run.job("a", 1, JobState::Failed, "");
        let plan = run.step();
        assert_eq!(
            states(&plan),
            [
                ("a".to_string(), NodeState::Failed),
                ("b".to_string(), NodeState::Skipped),
                ("c".to_string(), NodeState::Skipped),
            ]
        );
        let (state, error) = plan.changes.state.clone().expect("the run ends");
        assert_eq!(state, RunState::Failed);
        assert!(error.is_some_and(|e| e.contains("\"a\" failed") && e.contains("boom")));
    }

    const FAN: &str = "name: fan\nnodes:\n  - {name: split, module: m}\n  - {name: each, module: m, needs: [split], for_each: {items: /xs, concurrency: 2}}\n  - {name: merge, module: m, needs: [each]}\n";
    const FAN_COLLECT: &str = "name: fan\nnodes:\n  - {name: split, module: m}\n  - {name: each, module: m, needs: [split], for_each: {items: /xs, concurrency: 2, on_failure: collect_all}}\n";

    fn element(node: &str, idx: i64, job: JobId, state: JobState) -> ItemRecord {
        ItemRecord {
            node: node.into(),
            idx,
            job_id: job,
            job_state: state,
            job_error: (state == JobState::Failed).then(|| "element boom".into()),
        }
    }

    #[test]
    fn for_each_fans_out_up_to_its_concurrency_refills_and_gathers_in_order() {
        let mut run = Run::of(FAN);
        run.job("split", 1, JobState::Succeeded, r#"{"xs": [10, 20, 30]}"#);
        let fan = run.step();
        let each = fan
            .changes
            .nodes
            .iter()
            .find(|n| n.name == "each")
            .expect("each");
        assert_eq!(
            (each.state, each.items_total, each.items_next),
            (NodeState::Running, Some(3), 2)
        );
        let submitted: Vec<(i64, String)> = fan
            .changes
            .item_jobs
            .iter()
            .map(|(_, i, j)| (*i, String::from_utf8_lossy(&j.input).into_owned()))
            .collect();
        assert_eq!(submitted, [(0, "10".to_string()), (1, "20".to_string())]);
        assert_eq!(fan.changes.new_items.len(), 3, "every element is stored");

        // Element 0 ended: one slot free, so element 2 goes, read from the store.
        run.ended("split", NodeState::Succeeded);
        {
            let n = run.node("each");
            n.state = NodeState::Running;
            n.items_total = Some(3);
            n.items_next = 2;
        }
        run.snap.running_items = vec![
            element("each", 0, 10, JobState::Succeeded),
            element("each", 1, 11, JobState::Running),
        ];
        assert_eq!(
            run.needs(),
            [Wanted::PendingItems {
                node: "each".into(),
                from: 2,
                limit: 1
            }]
        );
        run.data
            .pending_items
            .insert("each".into(), vec![(2, b"30".to_vec())]);
        let refill = run.step();
        assert_eq!(refill.changes.item_jobs.len(), 1);
        assert_eq!(
            refill.changes.item_states,
            [("each".to_string(), 0, NodeState::Succeeded)]
        );

        // All three done: the outputs are gathered in order and passed on.
        {
            let n = run.node("each");
            n.items_next = 3;
            n.items_done = 2;
        }
        run.snap.running_items = vec![element("each", 2, 12, JobState::Succeeded)];
        run.data.pending_items.clear();
        assert_eq!(run.needs(), [Wanted::ItemOutputs("each".into())]);
        run.data.item_outputs.insert(
            "each".into(),
            vec![
                Some(b"20".to_vec()),
                Some(b"40".to_vec()),
                Some(b"60".to_vec()),
            ],
        );
        let gathered = run.step();
        let each = gathered
            .changes
            .nodes
            .iter()
            .find(|n| n.name == "each")
            .expect("each");
        assert_eq!(each.state, NodeState::Succeeded);
        assert_eq!(each.output.as_deref(), Some(&b"[20,40,60]"[..]));
        assert_eq!(
            started(&gathered),
            [("merge".to_string(), "[20,40,60]".to_string())]
        );
    }

    #[test]
    fn for_each_over_nothing_succeeds_at_once_with_an_empty_array() {
        let mut run = Run::of(FAN);
        run.job("split", 1, JobState::Succeeded, r#"{"xs": []}"#);
        let plan = run.step();
        let each = plan
            .changes
            .nodes
            .iter()
            .find(|n| n.name == "each")
            .expect("each");
        assert_eq!(
            (each.state, each.output.as_deref()),
            (NodeState::Succeeded, Some(&b"[]"[..]))
        );
        assert_eq!(started(&plan), [("merge".to_string(), "[]".to_string())]);
    }

    #[test]
    fn fail_fast_stops_the_other_elements_and_collect_all_waits_for_them() {
        for (yaml, fails_now) in [(FAN, true), (FAN_COLLECT, false)] {
            let mut run = Run::of(yaml);
            run.ended("split", NodeState::Succeeded);
            {
                let n = run.node("each");
                n.state = NodeState::Running;
                n.items_total = Some(2);
                n.items_next = 2;
            }
            run.snap.running_items = vec![
                element("each", 0, 10, JobState::Failed),
                element("each", 1, 11, JobState::Running),
            ];
            let plan = run.step();
            let each = plan
                .changes
                .nodes
                .iter()
                .find(|n| n.name == "each")
                .expect("each");
            if fails_now {
                assert_eq!(each.state, NodeState::Failed);
                assert!(
                    each.error
                        .as_deref()
                        .is_some_and(|e| e.contains("element 0")),
                    "{each:?}"
                );
                assert_eq!(plan.cancel, [11], "the other element is stopped");
            } else {
                assert_eq!(each.state, NodeState::Running, "collect_all waits");
                assert!(plan.cancel.is_empty());
                // The last element ends: the node fails, naming how many failed.
                {
                    let n = run.node("each");
                    n.items_done = 1;
                    n.items_failed = 1;
                }
                run.snap.running_items = vec![element("each", 1, 11, JobState::Succeeded)];
                let end = run.step();
                let each = end
                    .changes
                    .nodes
                    .iter()
                    .find(|n| n.name == "each")
                    .expect("each");
                assert_eq!(each.state, NodeState::Failed);
                assert!(
                    each.error
                        .as_deref()
                        .is_some_and(|e| e.starts_with("1 of 2 elements failed")),
                    "{each:?}"
                );
                assert_eq!(run_state(&end), Some(RunState::Failed));
            }
        }
    }

    #[test]
    fn a_cancel_stops_running_jobs_and_cancels_pending_nodes() {
        let mut run = Run::of(DIAMOND);
        run.ended("a", NodeState::Succeeded);
        run.job("b", 2, JobState::Running, "");
        run.job("c", 3, JobState::Succeeded, "{}");
        run.snap.run.cancel_requested = true;
        let plan = run.step();
        assert_eq!(plan.cancel, [2]);
        let d = plan
            .changes
            .nodes
            .iter()
            .find(|n| n.name == "d")
            .expect("d");
        assert_eq!(d.state, NodeState::Cancelled, "nothing new starts");
        assert_eq!(run_state(&plan), Some(RunState::Cancelling));

        // Once the running job ended, the run ends cancelled.
        run.snap.run.state = RunState::Cancelling;
        run.job("b", 2, JobState::Cancelled, "");
        run.ended("c", NodeState::Succeeded);
        run.ended("d", NodeState::Cancelled);
        let end = run.step();
        assert_eq!(run_state(&end), Some(RunState::Cancelled));
    }

    #[test]
    fn a_passed_deadline_stops_the_run_and_fails_it_saying_so() {
        let mut run = Run::of(
            "name: slow\ntimeout: 1s\nnodes:\n  - {name: a, module: m}\n  - {name: b, module: m, needs: [a]}\n",
        );
        run.job("a", 1, JobState::Running, "");
        run.snap.run.deadline_at = Some(NOW - 1);
        let plan = run.step();
        assert_eq!(plan.cancel, [1]);
        assert_eq!(run_state(&plan), Some(RunState::Cancelling));
        run.snap.run.state = RunState::Cancelling;
        run.snap.run.error = Some("the run's timeout (1s) passed".into());
        run.job("a", 1, JobState::Cancelled, "");
        run.ended("b", NodeState::Cancelled);
        let end = run.step();
        let (state, error) = end.changes.state.clone().expect("ends");
        assert_eq!(state, RunState::Failed);
        assert!(error.is_some_and(|e| e.contains("timeout")));
    }

    #[test]
    fn a_step_asks_for_the_outputs_it_needs_and_only_those() {
        let mut run = Run::of(DIAMOND);
        run.ended("a", NodeState::Succeeded);
        run.job("b", 2, JobState::Succeeded, "{}");
        run.job("c", 3, JobState::Succeeded, "{}");
        run.data.job_outputs.clear();
        let mut wanted = run.needs();
        wanted.sort_by_key(|w| format!("{w:?}"));
        assert_eq!(wanted, [Wanted::JobOutput(2), Wanted::JobOutput(3)]);
        // A chain's node reads its upstream's output in its job: nothing to read here.
        let mut chain = Run::of(CHAIN);
        chain.job("a", 1, JobState::Succeeded, "{}");
        chain.data.job_outputs.clear();
        assert_eq!(started(&chain.step()).len(), 1);
    }

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
