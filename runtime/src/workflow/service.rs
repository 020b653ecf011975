//! The workflow service's entry points: start a run, cancel it, read it. The engine
//! ([`super::engine`]) does the rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};

use super::definition::{Definition, Validated};
use crate::service::{JobService, ServiceError};
use crate::store::{
    NewRun, NodeRecord, NodeState, RunId, RunRecord, RunSnapshot, RunState, Store, StoreError,
    now_ms,
};

/// Validated definitions by (name, version).
type Definitions = HashMap<(String, i64), Arc<Validated>>;

/// Starts, cancels and reads workflow runs. Cheap to clone.
#[derive(Clone)]
pub struct WorkflowService {
    pub jobs: JobService,
    /// Validated definitions by (name, version): versions never change once stored.
    definitions: Arc<Mutex<Definitions>>,
}

impl WorkflowService {
    pub fn new(jobs: JobService) -> WorkflowService {
        WorkflowService {
            jobs,
            definitions: Arc::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.jobs.store
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
            .store()
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
        let policy = &self.jobs.policy;
        policy.admit(&policy.defaults, input.len(), &Default::default())?;
        let mut nodes = Vec::with_capacity(def.definition.nodes.len());
        let mut unknown = Vec::new();
        for n in &def.definition.nodes {
            match self.store().get_module(&n.module).await? {
                Some(m) => nodes.push((n.name.clone(), m.digest)),
                None => unknown.push(format!("node {:?}: module {:?}", n.name, n.module)),
            }
            let limits = n.limits.unwrap_or(policy.defaults);
            policy.admit(&limits, 0, &Default::default())?;
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
            .store()
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

    /// Asks a run to stop: its pending nodes are cancelled and its running jobs stopped.
    pub async fn cancel_run(&self, id: RunId) -> Result<RunState, ServiceError> {
        Ok(self.store().request_run_cancel(id, now_ms()).await?)
    }

    /// A run as the API shows it: every node in definition order with its state and job
    /// (and each element of a `for_each` node), and the output once the run succeeded.
    pub async fn view(&self, id: RunId) -> Result<Value, ServiceError> {
        let snap = self
            .store()
            .get_run(id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "workflow run",
                id: id.to_string(),
            })?;
        // Without a usable definition (the run then fails, saying why), nodes are shown as
        // stored, by name.
        let def = self
            .definition(&snap.run.workflow, Some(snap.run.version))
            .await
            .ok()
            .map(|(_, def)| def);
        let order: Vec<(&str, &[String])> = match &def {
            Some(def) => def
                .definition
                .nodes
                .iter()
                .map(|d| (d.name.as_str(), d.needs.as_slice()))
                .collect(),
            None => snap
                .nodes
                .iter()
                .map(|n| (n.name.as_str(), &[][..]))
                .collect(),
        };
        let by_name: HashMap<&str, &NodeRecord> =
            snap.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
        let mut nodes = Vec::with_capacity(order.len());
        for (name, needs) in order {
            let Some(n) = by_name.get(name) else {
                continue;
            };
            let mut v = json!({
                "name": n.name,
                "module": n.module,
                "state": n.state,
                "needs": needs,
                "job": n.job_id,
                "error": n.error,
                "started_at": n.started_at,
                "finished_at": n.finished_at,
            });
            if let Some(total) = n.items_total {
                let items = self.store().items(id, &n.name).await?;
                v["items"] = json!({
                    "total": total,
                    "submitted": n.items_next,
                    "done": n.items_done,
                    "failed": n.items_failed,
                    "elements": items.iter().map(|(idx, state, job)| {
                        json!({ "index": idx, "state": state, "job": job })
                    }).collect::<Vec<_>>(),
                });
            }
            nodes.push(v);
        }
        let output = match &def {
            Some(def) if snap.run.state == RunState::Succeeded => {
                Some(self.output(&snap, def).await?)
            }
            _ => None,
        };
        Ok(json!({
            "id": snap.run.id,
            "workflow": snap.run.workflow,
            "version": snap.run.version,
            "state": snap.run.state,
            "error": snap.run.error,
            "cancel_requested": snap.run.cancel_requested,
            "deadline_at": snap.run.deadline_at,
            "created_at": snap.run.created_at,
            "updated_at": snap.run.updated_at,
            "finished_at": snap.run.finished_at,
            "nodes": nodes,
            "output": output,
        }))
    }

    /// A succeeded run's output: its one leaf node's output, or an object keyed by leaf name
    /// when several leaves succeeded (skipped leaves are left out).
    async fn output(&self, snap: &RunSnapshot, def: &Validated) -> Result<Value, ServiceError> {
        let needed: std::collections::HashSet<&str> = def
            .definition
            .nodes
            .iter()
            .flat_map(|n| n.needs.iter().map(String::as_str))
            .collect();
        let mut leaves = Vec::new();
        for d in &def.definition.nodes {
            if needed.contains(d.name.as_str()) {
                continue;
            }
            if let Some(n) = snap.nodes.iter().find(|n| n.name == d.name)
                && n.state == NodeState::Succeeded
            {
                leaves.push((n.name.clone(), self.node_output(n).await?));
            }
        }
        Ok(match leaves.len() {
            1 => leaves.pop().map(|(_, v)| v).unwrap_or(Value::Null),
            _ => Value::Object(leaves.into_iter().collect()),
        })
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

/// A job's output as JSON: its JSON value, `null` when empty, and a string when it is not
/// JSON (so that text outputs still pass from node to node).
pub fn output_value(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}
