//! The part of a workflow engine step both backends share, as Rust: what a step writes
//! (its run's new state, the jobs it submits, its node and element rows) and what reading a
//! run returns. Each backend runs its own statements around it (`sqlite/workflows.rs`,
//! `postgres/workflows.rs`).
//!
//! Every step of the engine is one transaction guarded by the run's `rev`: it writes the
//! node and element changes, the jobs it submits (through the backend's own job insert, so a
//! node's job exists iff its step committed) and the run's events.

use std::collections::{BTreeMap, HashMap};

use super::model::*;
use super::rows::{ItemRow, NodeRow, RunRow};
use super::{Result, StoreError};

/// The first event of a run.
pub(super) fn run_created_event(run: &NewRun) -> String {
    serde_json::json!({
        "state": RunState::Running,
        "workflow": run.workflow,
        "version": run.version,
    })
    .to_string()
}

/// The record of a run just created with `id`.
pub(super) fn created_run(id: RunId, run: NewRun, now: i64) -> RunRecord {
    RunRecord {
        id,
        workflow: run.workflow,
        version: run.version,
        state: RunState::Running,
        input: run.input,
        error: None,
        cancel_requested: false,
        deadline_at: run.deadline_at,
        rev: 0,
        created_at: now,
        updated_at: now,
        finished_at: None,
    }
}

/// A run's snapshot from its rows.
pub(super) fn snapshot(
    run: RunRow,
    nodes: Vec<NodeRow>,
    items: Vec<ItemRow>,
) -> Result<RunSnapshot> {
    Ok(RunSnapshot {
        run: run.into_record()?,
        nodes: nodes
            .into_iter()
            .map(NodeRow::into_record)
            .collect::<Result<_>>()?,
        running_items: items
            .into_iter()
            .map(ItemRow::into_record)
            .collect::<Result<_>>()?,
    })
}

/// The run columns a step sets: state, error, finished_at (each `None` to keep).
pub(super) fn step_state(
    changes: &RunChanges,
    now: i64,
) -> (Option<&'static str>, Option<&str>, Option<i64>) {
    match &changes.state {
        Some((s, e)) => (Some(s.as_str()), e.as_deref(), s.is_final().then_some(now)),
        None => (None, None, None),
    }
}

/// The jobs a step submits: node jobs first, then element jobs, in order.
pub(super) fn step_jobs(changes: &RunChanges) -> Vec<NewJob> {
    changes
        .node_jobs
        .iter()
        .map(|(_, j)| j.clone())
        .chain(changes.item_jobs.iter().map(|(_, _, j)| j.clone()))
        .collect()
}

/// One changed node as it is written: its job is the one the step submitted for it, if any.
pub(super) struct NodeWrite<'a> {
    pub node: &'a NodeRecord,
    pub job_id: Option<JobId>,
}

/// The step's node rows, given the ids of the jobs it submitted (`step_jobs` order).
pub(super) fn node_writes<'a>(changes: &'a RunChanges, ids: &[JobId]) -> Vec<NodeWrite<'a>> {
    debug_assert!(
        changes
            .node_jobs
            .iter()
            .all(|(j, _)| changes.nodes.iter().any(|n| &n.name == j))
    );
    let node_job: HashMap<&str, JobId> = changes
        .node_jobs
        .iter()
        .map(|(n, _)| n.as_str())
        .zip(ids.iter().copied())
        .collect();
    changes
        .nodes
        .iter()
        .map(|n| NodeWrite {
            node: n,
            job_id: node_job.get(n.name.as_str()).copied().or(n.job_id),
        })
        .collect()
}

/// One element row as it is written: node, index, state, input, job.
pub(super) type ItemWrite<'a> = (&'a str, i64, &'a str, Option<&'a [u8]>, Option<JobId>);

/// The step's element rows: new ones (pending, with their input), submitted ones (running, their
/// job; the input dropped) and ended ones, merged per element; `ids` as for `node_writes`.
pub(super) fn item_writes<'a>(changes: &'a RunChanges, ids: &[JobId]) -> Vec<ItemWrite<'a>> {
    let mut items: BTreeMap<(&str, i64), ItemWrite<'a>> = BTreeMap::new();
    for (node, idx, input) in &changes.new_items {
        let input = Some(input.as_slice());
        items.insert((node, *idx), (node, *idx, "pending", input, None));
    }
    let item_ids = ids.get(changes.node_jobs.len()..).unwrap_or_default();
    for ((node, idx, _), job) in changes.item_jobs.iter().zip(item_ids) {
        items.insert((node, *idx), (node, *idx, "running", None, Some(*job)));
    }
    for (node, idx, state) in &changes.item_states {
        items.insert((node, *idx), (node, *idx, state.as_str(), None, None));
    }
    items.into_values().collect()
}

/// What asking run `id` in `state` to cancel does: `Ok(true)` to write the request,
/// `Ok(false)` when it is already cancelling.
pub(super) fn cancel_decision(id: RunId, state: Option<String>) -> Result<bool> {
    let state: RunState = state
        .ok_or(StoreError::NotFound {
            what: "workflow run",
            id: id.to_string(),
        })?
        .parse()
        .map_err(StoreError::Corrupt)?;
    match state {
        RunState::Running => Ok(true),
        RunState::Cancelling => Ok(false),
        done => Err(StoreError::Conflict(format!(
            "workflow run {id} already finished: it is {done}"
        ))),
    }
}

/// Whether run `id` in `state` may be retried: `NotFound` without a run, `Conflict` unless it
/// is failed or cancelled.
pub(super) fn retry_decision(id: RunId, state: Option<String>) -> Result<()> {
    let state: RunState = state
        .ok_or(StoreError::NotFound {
            what: "workflow run",
            id: id.to_string(),
        })?
        .parse()
        .map_err(StoreError::Corrupt)?;
    match state {
        RunState::Failed | RunState::Cancelled => Ok(()),
        other => Err(StoreError::Conflict(format!(
            "workflow run {id} is {other}: only a failed or cancelled run can be retried"
        ))),
    }
}

/// The event that records a retry: the nodes it planned again, and those given a new input.
pub(super) fn retry_event(nodes: &[String], inputs: &[(String, Vec<u8>)]) -> serde_json::Value {
    let mut event =
        serde_json::json!({ "state": RunState::Running, "reason": "retried", "nodes": nodes });
    if !inputs.is_empty() {
        let given: Vec<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
        event["new_input"] = serde_json::json!(given);
    }
    event
}

/// A node given a new input at a retry that was not planned again as pending: refused.
pub(super) fn not_retried(id: RunId, node: &str) -> StoreError {
    StoreError::Conflict(format!(
        "node {node:?} of workflow run {id} is not run again from its start by this retry (it succeeded, or it is a for_each node whose failed elements run again on their own inputs): only such a node takes a new input"
    ))
}
