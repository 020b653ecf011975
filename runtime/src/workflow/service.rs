//! The workflow service's entry points: start a run, cancel it, read it. The engine
//! ([`super::engine`]) does the rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;
use serde_json::value::RawValue;

use super::definition::{Definition, Validated};
use crate::service::{JobService, ServiceError};
use crate::store::{
    NewRun, NodeRecord, NodeState, RunId, RunRecord, RunState, Store, StoreError, WorkflowStore,
    now_ms,
};

/// Validated definitions by (name, version).
type Definitions = HashMap<(String, i64), Arc<Validated>>;

/// Starts, cancels and reads workflow runs. Cheap to clone.
#[derive(Clone)]
pub struct WorkflowService {
    pub jobs: JobService,
    /// The workflow tables: definitions, runs, nodes, elements, run events.
    runs: Arc<dyn WorkflowStore>,
    /// Validated definitions by (name, version): versions never change once stored.
    definitions: Arc<Mutex<Definitions>>,
}

impl WorkflowService {
    pub fn new(jobs: JobService, runs: Arc<dyn WorkflowStore>) -> WorkflowService {
        WorkflowService {
            jobs,
            runs,
            definitions: Arc::default(),
        }
    }

    /// The job store (jobs, outputs).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.jobs.store
    }

    /// The workflow tables (definitions and runs).
    pub fn runs(&self) -> &Arc<dyn WorkflowStore> {
        &self.runs
    }

    /// A stored definition (its latest version when `version` is `None`), validated once per
    /// version, with its version.
    pub async fn definition(
        &self,
        name: &str,
        version: Option<i64>,
    ) -> Result<(i64, Arc<Validated>), ServiceError> {
        if let Some(v) = version
            && let Some(d) = self.cached(name, v)
        {
            return Ok((v, d));
        }
        let record = self
            .runs
            .get_workflow(name, version)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "workflow",
                id: match version {
                    Some(v) => format!("{name:?} version {v}"),
                    None => format!("{name:?}"),
                },
            })?;
        if let Some(d) = self.cached(name, record.version) {
            return Ok((record.version, d));
        }
        let definition: Definition = serde_json::from_value(record.definition)
            .map_err(|e| StoreError::Corrupt(format!("workflow {name:?}: {e}")))?;
        let validated = Arc::new(
            definition
                .validate()
                .map_err(|e| StoreError::Corrupt(format!("stored workflow {name:?}: {e}")))?,
        );
        self.definitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((name.to_string(), record.version), validated.clone());
        Ok((record.version, validated))
    }

    fn cached(&self, name: &str, version: i64) -> Option<Arc<Validated>> {
        self.definitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(name.to_string(), version))
            .cloned()
    }

    /// Starts a run of workflow `name` (its latest version unless `version`) on `input`. The
    /// run pins the version and each node's module digest; the engine starts its roots.
    pub async fn start_run(
        &self,
        name: &str,
        version: Option<i64>,
        input: Vec<u8>,
    ) -> Result<(RunRecord, Arc<Validated>), ServiceError> {
        let (version, def) = self.definition(name, version).await?;
        self.check_input(&input)?;
        self.check_nodes(&def.definition)?;
        let mut nodes = Vec::with_capacity(def.definition.nodes.len());
        let mut unknown = Vec::new();
        for n in &def.definition.nodes {
            match self.store().get_module(&n.module).await? {
                Some(m) => nodes.push((n.name.clone(), m.digest)),
                None => unknown.push(format!("node {:?}: module {:?}", n.name, n.module)),
            }
        }
        if !unknown.is_empty() {
            return Err(ServiceError::Invalid(format!(
                "unknown modules, upload them first (POST /v1/modules): {}",
                unknown.join(", ")
            )));
        }
        let now = now_ms();
        let deadline_at =
            crate::service::deadline_after(now, "timeout", def.definition.timeout.as_deref())?;
        let run = self
            .runs()
            .create_run(
                NewRun {
                    workflow: name.to_string(),
                    version,
                    input,
                    deadline_at,
                    nodes,
                },
                now,
            )
            .await?;
        Ok((run, def))
    }

    /// Checks an input a run or a node would get against the admission policy (its size).
    pub fn check_input(&self, input: &[u8]) -> Result<(), crate::admission::Refusal> {
        let policy = &self.jobs.policy;
        policy.admit(
            &policy.defaults,
            input.len(),
            &Default::default(),
            &self.jobs.allowed_dirs,
        )
    }

    /// Checks what a definition's nodes ask for against the admission policy in force: their
    /// limits and retry policies (where the definition is stored, and again at each run).
    pub fn check_nodes(&self, definition: &Definition) -> Result<(), ServiceError> {
        let policy = &self.jobs.policy;
        for n in &definition.nodes {
            let in_node = |e: crate::admission::Refusal| {
                ServiceError::Invalid(format!("node {:?}: {e}", n.name))
            };
            let limits = n.limits.unwrap_or(policy.defaults);
            policy
                .recheck(&limits, &Default::default(), &self.jobs.allowed_dirs)
                .map_err(in_node)?;
            if let Some(retry) = &n.retry {
                policy.check_retry(retry).map_err(in_node)?;
            }
        }
        Ok(())
    }

    /// Puts a failed or cancelled run back to running from where it failed (see
    /// [`WorkflowStore::retry_run`]), its timeout counted again from now; the nodes of
    /// `inputs` run on the input given there (JSON) instead of the one the plan computes.
    /// Returns the nodes planned again.
    pub async fn retry_run(
        &self,
        id: RunId,
        inputs: &std::collections::BTreeMap<String, Value>,
    ) -> Result<Vec<String>, ServiceError> {
        let Some(snap) = self.runs().get_run(id).await? else {
            return Err(StoreError::NotFound {
                what: "workflow run",
                id: id.to_string(),
            }
            .into());
        };
        let (_, def) = self
            .definition(&snap.run.workflow, Some(snap.run.version))
            .await?;
        // What the nodes ask for is checked against the policy in force now.
        self.check_nodes(&def.definition)?;
        let mut given = Vec::with_capacity(inputs.len());
        for (node, input) in inputs {
            if def.node(node).is_none() {
                return Err(ServiceError::Invalid(format!(
                    "inputs: workflow {:?} has no node {node:?}",
                    snap.run.workflow
                )));
            }
            let bytes = crate::service::input_bytes(Some(input), None)?;
            self.check_input(&bytes)
                .map_err(|e| ServiceError::Invalid(format!("inputs.{node}: {e}")))?;
            given.push((node.clone(), bytes));
        }
        let now = now_ms();
        let deadline_at =
            crate::service::deadline_after(now, "timeout", def.definition.timeout.as_deref())?;
        let nodes = self.runs().retry_run(id, deadline_at, &given, now).await?;
        tracing::info!(run = id, "workflow run {id} retried: {}", nodes.join(", "));
        Ok(nodes)
    }

    /// Asks a run to stop: its pending nodes are cancelled and its running jobs stopped.
    pub async fn cancel_run(&self, id: RunId) -> Result<RunState, ServiceError> {
        Ok(self.runs().request_run_cancel(id, now_ms()).await?)
    }

    /// A succeeded run's output: its one leaf node's output, or an object keyed by leaf name
    /// when several leaves succeeded (skipped leaves are left out). Outputs are passed through
    /// as stored, not parsed. `by_name` holds the run's nodes.
    pub async fn run_output(
        &self,
        def: &Validated,
        by_name: &HashMap<&str, &NodeRecord>,
    ) -> Result<Box<RawValue>, ServiceError> {
        let needed: std::collections::HashSet<&str> = def
            .definition
            .nodes
            .iter()
            .flat_map(|n| n.needs.iter().map(String::as_str))
            .collect();
        let mut leaves = std::collections::BTreeMap::new();
        let mut only = None;
        for d in &def.definition.nodes {
            if needed.contains(d.name.as_str()) {
                continue;
            }
            if let Some(n) = by_name.get(d.name.as_str())
                && n.state == NodeState::Succeeded
            {
                let out = raw_output(&self.node_output_bytes(n).await?);
                only = Some(out.clone());
                leaves.insert(n.name.clone(), out);
            }
        }
        match (leaves.len(), only) {
            (1, Some(out)) => Ok(out),
            _ => serde_json::value::to_raw_value(&leaves)
                .map_err(|e| ServiceError::Store(StoreError::Corrupt(e.to_string()))),
        }
    }

    /// A succeeded node's output as JSON (see [`output_value`]).
    pub async fn node_output(&self, n: &NodeRecord) -> Result<Value, ServiceError> {
        Ok(output_value(&self.node_output_bytes(n).await?))
    }

    /// A succeeded node's output: a `for_each` node's gathered array, or its job's output.
    pub async fn node_output_bytes(&self, n: &NodeRecord) -> Result<Vec<u8>, ServiceError> {
        if let Some(out) = &n.output {
            return Ok(out.clone());
        }
        match n.job_id {
            Some(job) => Ok(self.store().job_output(job).await?.unwrap_or_default()),
            None => Ok(Vec::new()),
        }
    }
}

/// A job's output as it goes into a JSON answer, without parsing it into a tree: the output
/// itself when it is JSON, `null` when empty, else a JSON string of its text.
pub fn raw_output(bytes: &[u8]) -> Box<RawValue> {
    if bytes.is_empty() {
        return RawValue::NULL.to_owned();
    }
    match serde_json::from_slice::<&RawValue>(bytes) {
        Ok(raw) => raw.to_owned(),
        Err(_) => serde_json::value::to_raw_value(&String::from_utf8_lossy(bytes))
            .unwrap_or_else(|_| RawValue::NULL.to_owned()),
    }
}

/// A job's output as JSON: its JSON value, `null` when empty, and a string when it is not
/// JSON (so that text outputs still pass from node to node).
pub fn output_value(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}
