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
        // An input given when the run was retried takes the place of the computed one.
        if let Some(given) = &n.input {
            input = Some(given.clone());
        }
        match &d.for_each {
            // One upstream whose output is its job's: the job reads it from there when it
            // starts, instead of a copy here.
            None if input.is_none()
                && let Some(from) = passed_on(&nodes, &d.needs) =>
            {
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
        queue: spec
            .and_then(|s| s.queue.clone())
            .unwrap_or_else(|| crate::store::DEFAULT_QUEUE.to_owned()),
        priority: 0,
        run_at: None,
        idempotency_key: None,
        deadline_at: snap.run.deadline_at,
        workflow_ref: Some(snap.run.id.to_string()),
        input_from: None,
        // Checked when the definition was stored.
        concurrency: spec.and_then(|s| {
            crate::service::concurrency(s.concurrency_key.clone(), s.concurrency_limit)
                .ok()
                .flatten()
        }),
    }
}

#[cfg(test)]
mod tests;
