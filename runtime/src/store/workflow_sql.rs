//! [`WorkflowStore`](super::WorkflowStore)'s SQL and the logic around it, written once for
//! both backends: the workflow tables use no backend-specific SQL, only placeholders differ
//! (`?` against `$1`). Postgres implements the trait with sqlx through `workflow_store!`, which
//! passes each text through `postgres_placeholders`; SQLite runs the same texts with rusqlite
//! (the `impl WorkflowStore for SqliteStore` at the end of `sqlite.rs`).
//!
//! Every step of the engine is one transaction guarded by the run's `rev`: it writes the
//! node and element changes, the jobs it submits (through the backend's own job insert, so a
//! node's job exists iff its step committed) and the run's events.

use std::collections::{BTreeMap, HashMap};

use super::model::*;
use super::rows::{ItemRow, NodeRow, RUN_COLUMNS, RunRow};
use super::{Result, StoreError};

pub(super) const CREATE_RUN: &str =
    "INSERT INTO workflow_runs (workflow, version, state, input, deadline_at, event_seq, created_at, updated_at)
     VALUES (?, ?, 'running', ?, ?, 1, ?, ?) RETURNING id";
pub(super) const CREATE_NODE: &str =
    "INSERT INTO workflow_nodes (run_id, node, module, state) VALUES (?, ?, ?, 'pending')";
pub(super) const CREATE_RUN_EVENT: &str =
    "INSERT INTO workflow_events (run_id, seq, kind, data, at) VALUES (?, 1, 'run', ?, ?)";

pub(super) static RUN_BY_ID: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("SELECT {RUN_COLUMNS} FROM workflow_runs WHERE id = ?"));
pub(super) const RUN_NODES: &str =
    "SELECT n.node, n.module, n.state, n.job_id, n.items_total, n.items_next, n.items_done,
            n.items_failed, n.output, n.error, n.started_at, n.finished_at,
            j.state AS job_state, j.error AS job_error
     FROM workflow_nodes n LEFT JOIN jobs j ON j.id = n.job_id
     WHERE n.run_id = ? ORDER BY n.node";
/// Elements exist only for `for_each` nodes that started.
pub(super) const RUNNING_ITEMS: &str =
    "SELECT i.node, i.idx, i.job_id, j.state AS job_state, j.error AS job_error
     FROM workflow_items i JOIN jobs j ON j.id = i.job_id
     WHERE i.run_id = ? AND i.state = 'running' ORDER BY i.node, i.idx";

/// The step's guard, its new state and room for its events, in one statement: binds now,
/// event count, state, error, finished_at, id, rev; returns the last event seq.
pub(super) const STEP_RUN: &str = "UPDATE workflow_runs
     SET rev = rev + 1, updated_at = ?, event_seq = event_seq + ?,
         state = COALESCE(?, state), error = COALESCE(?, error),
         finished_at = COALESCE(?, finished_at)
     WHERE id = ? AND rev = ? RETURNING event_seq";
/// Changed nodes are upserts (the rows exist: an upsert is a bulk update with no statement
/// per row): this, then `VALUES` rows of 13, then `NODE_UPSERT_TAIL`.
pub(super) const NODE_UPSERT_HEAD: &str =
    "INSERT INTO workflow_nodes (run_id, node, module, state, job_id, items_total,
     items_next, items_done, items_failed, output, error, started_at, finished_at) ";
pub(super) const NODE_UPSERT_TAIL: &str =
    " ON CONFLICT (run_id, node) DO UPDATE SET state = excluded.state,
     job_id = COALESCE(excluded.job_id, workflow_nodes.job_id),
     items_total = excluded.items_total, items_next = excluded.items_next,
     items_done = excluded.items_done, items_failed = excluded.items_failed,
     output = excluded.output, error = excluded.error,
     started_at = excluded.started_at, finished_at = excluded.finished_at";
/// Element upserts: this, `VALUES` rows of 6, `ITEM_UPSERT_TAIL`.
pub(super) const ITEM_UPSERT_HEAD: &str =
    "INSERT INTO workflow_items (run_id, node, idx, state, input, job_id) ";
pub(super) const ITEM_UPSERT_TAIL: &str =
    " ON CONFLICT (run_id, node, idx) DO UPDATE SET state = excluded.state,
     input = excluded.input, job_id = COALESCE(excluded.job_id, workflow_items.job_id)";
/// Run events: this, then `VALUES` rows of 5.
pub(super) const RUN_EVENTS_HEAD: &str =
    "INSERT INTO workflow_events (run_id, seq, kind, data, at) ";

pub(super) const RUNS_TO_ADVANCE: &str = "SELECT id FROM workflow_runs
     WHERE state IN ('running', 'cancelling')
       AND (rev = 0 OR (state = 'running' AND (cancel_requested OR deadline_at <= ?)))
     UNION
     SELECT n.run_id FROM workflow_nodes n JOIN jobs j ON j.id = n.job_id
     WHERE n.state = 'running' AND j.state IN ('succeeded', 'failed', 'cancelled')
     UNION
     SELECT i.run_id FROM workflow_items i JOIN jobs j ON j.id = i.job_id
     WHERE i.state = 'running' AND j.state IN ('succeeded', 'failed', 'cancelled')";
pub(super) const ACTIVE_RUNS: &str =
    "SELECT id FROM workflow_runs WHERE state IN ('running', 'cancelling') ORDER BY id";
pub(super) const PENDING_ITEMS: &str = "SELECT idx, input FROM workflow_items
     WHERE run_id = ? AND node = ? AND idx >= ? AND state = 'pending'
     ORDER BY idx LIMIT ?";
pub(super) const ITEM_OUTPUTS: &str =
    "SELECT j.output FROM workflow_items i LEFT JOIN jobs j ON j.id = i.job_id
     WHERE i.run_id = ? AND i.node = ? ORDER BY i.idx";
pub(super) const ITEMS: &str =
    "SELECT idx, state, job_id FROM workflow_items WHERE run_id = ? AND node = ? ORDER BY idx";
pub(super) const JOB_OUTPUT: &str = "SELECT output FROM jobs WHERE id = ?";
pub(super) const RUN_STATE: &str = "SELECT state FROM workflow_runs WHERE id = ?";
pub(super) const REQUEST_CANCEL: &str =
    "UPDATE workflow_runs SET cancel_requested = TRUE, updated_at = ? WHERE id = ?";
pub(super) const RUN_EVENTS: &str = "SELECT run_id, seq, kind, data, at FROM workflow_events
     WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?";

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

/// `impl WorkflowStore for $store` with sqlx: `$db` is the sqlx database, `$sql` turns `?`
/// placeholders into the backend's, `$insert_jobs` inserts jobs inside a transaction (returning
/// the jobs and the notices to send), `$writer`/`$reader` name the pools.
macro_rules! workflow_store {
    (
        $store:ty, $db:ty, sql: $sql:path, insert_jobs: $insert_jobs:path,
        writer: $writer:ident, reader: $reader:ident
    ) => {
        #[async_trait::async_trait]
        impl super::WorkflowStore for $store {
            async fn create_run(&self, run: NewRun, now: i64) -> Result<RunRecord> {
                use super::workflow_sql as w;
                let mut tx = self.$writer.begin().await?;
                let id: i64 = sqlx::query_scalar(AssertSqlSafe($sql(w::CREATE_RUN)))
                    .bind(&run.workflow)
                    .bind(run.version)
                    .bind(&run.input)
                    .bind(run.deadline_at)
                    .bind(now)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                for (node, module) in &run.nodes {
                    sqlx::query(AssertSqlSafe($sql(w::CREATE_NODE)))
                        .bind(id)
                        .bind(node)
                        .bind(module)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(AssertSqlSafe($sql(w::CREATE_RUN_EVENT)))
                    .bind(id)
                    .bind(w::run_created_event(&run))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                self.announce(vec![Notice::Run(id), Notice::RunRequest(id)])
                    .await;
                Ok(w::created_run(id, run, now))
            }

            async fn get_run(&self, id: RunId) -> Result<Option<RunSnapshot>> {
                use super::workflow_sql as w;
                // One connection for the two or three reads (a pool use costs more than a read).
                let mut conn = self.$reader.acquire().await?;
                let run: Option<RunRow> = sqlx::query_as(AssertSqlSafe($sql(&w::RUN_BY_ID)))
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
                let Some(run) = run else { return Ok(None) };
                let nodes: Vec<NodeRow> = sqlx::query_as(AssertSqlSafe($sql(w::RUN_NODES)))
                    .bind(id)
                    .fetch_all(&mut *conn)
                    .await?;
                let items: Vec<ItemRow> = if !nodes.iter().any(NodeRow::fans_out) {
                    Vec::new()
                } else {
                    sqlx::query_as(AssertSqlSafe($sql(w::RUNNING_ITEMS)))
                        .bind(id)
                        .fetch_all(&mut *conn)
                        .await?
                };
                w::snapshot(run, nodes, items).map(Some)
            }

            async fn apply_run(
                &self,
                id: RunId,
                rev: i64,
                changes: RunChanges,
                now: i64,
            ) -> Result<Option<Vec<JobId>>> {
                use super::workflow_sql as w;
                let mut tx = self.$writer.begin().await?;
                let (state, error, finished) = w::step_state(&changes, now);
                let n_events = changes.events.len() as i64;
                let last_seq: Option<i64> = sqlx::query_scalar(AssertSqlSafe($sql(w::STEP_RUN)))
                    .bind(now)
                    .bind(n_events)
                    .bind(state)
                    .bind(error)
                    .bind(finished)
                    .bind(id)
                    .bind(rev)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(last_seq) = last_seq else {
                    return Ok(None);
                };
                let (inserted, mut notices) =
                    $insert_jobs(&mut tx, w::step_jobs(&changes), now).await?;
                let ids: Vec<JobId> = inserted.iter().map(|(j, _)| j.id).collect();
                for chunk in w::node_writes(&changes, &ids).chunks(200) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(w::NODE_UPSERT_HEAD);
                    q.push_values(chunk, |mut b, w| {
                        let n = w.node;
                        b.push_bind(id)
                            .push_bind(n.name.as_str())
                            .push_bind(n.module.as_str())
                            .push_bind(n.state.as_str())
                            .push_bind(w.job_id)
                            .push_bind(n.items_total)
                            .push_bind(n.items_next)
                            .push_bind(n.items_done)
                            .push_bind(n.items_failed)
                            .push_bind(n.output.as_deref())
                            .push_bind(n.error.as_deref())
                            .push_bind(n.started_at)
                            .push_bind(n.finished_at);
                    });
                    q.push(w::NODE_UPSERT_TAIL);
                    q.build().execute(&mut *tx).await?;
                }
                for chunk in w::item_writes(&changes, &ids).chunks(500) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(w::ITEM_UPSERT_HEAD);
                    q.push_values(chunk, |mut b, (node, idx, state, input, job)| {
                        b.push_bind(id)
                            .push_bind(*node)
                            .push_bind(*idx)
                            .push_bind(*state)
                            .push_bind(*input)
                            .push_bind(*job);
                    });
                    q.push(w::ITEM_UPSERT_TAIL);
                    q.build().execute(&mut *tx).await?;
                }
                if !changes.events.is_empty() {
                    let first = last_seq - n_events + 1;
                    let mut q = sqlx::QueryBuilder::<$db>::new(w::RUN_EVENTS_HEAD);
                    q.push_values(changes.events.iter().enumerate(), |mut b, (i, e)| {
                        b.push_bind(id)
                            .push_bind(first + i as i64)
                            .push_bind(e.kind)
                            .push_bind(e.data.to_string())
                            .push_bind(now);
                    });
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                notices.push(Notice::Run(id));
                self.announce(notices).await;
                Ok(Some(ids))
            }

            async fn runs_to_advance(&self, now: i64) -> Result<Vec<RunId>> {
                Ok(
                    sqlx::query_scalar(AssertSqlSafe($sql(super::workflow_sql::RUNS_TO_ADVANCE)))
                        .bind(now)
                        .fetch_all(&self.$reader)
                        .await?,
                )
            }

            async fn active_runs(&self) -> Result<Vec<RunId>> {
                Ok(sqlx::query_scalar(super::workflow_sql::ACTIVE_RUNS)
                    .fetch_all(&self.$reader)
                    .await?)
            }

            async fn pending_items(
                &self,
                run: RunId,
                node: &str,
                from: i64,
                limit: i64,
            ) -> Result<Vec<(i64, Vec<u8>)>> {
                let rows: Vec<(i64, Option<Vec<u8>>)> =
                    sqlx::query_as(AssertSqlSafe($sql(super::workflow_sql::PENDING_ITEMS)))
                        .bind(run)
                        .bind(node)
                        .bind(from)
                        .bind(limit)
                        .fetch_all(&self.$reader)
                        .await?;
                Ok(rows
                    .into_iter()
                    .map(|(i, input)| (i, input.unwrap_or_default()))
                    .collect())
            }

            async fn item_outputs(&self, run: RunId, node: &str) -> Result<Vec<Option<Vec<u8>>>> {
                let rows: Vec<(Option<Vec<u8>>,)> =
                    sqlx::query_as(AssertSqlSafe($sql(super::workflow_sql::ITEM_OUTPUTS)))
                        .bind(run)
                        .bind(node)
                        .fetch_all(&self.$reader)
                        .await?;
                Ok(rows.into_iter().map(|(o,)| o).collect())
            }

            async fn items(
                &self,
                run: RunId,
                node: &str,
            ) -> Result<Vec<(i64, NodeState, Option<JobId>)>> {
                let rows: Vec<(i64, String, Option<i64>)> =
                    sqlx::query_as(AssertSqlSafe($sql(super::workflow_sql::ITEMS)))
                        .bind(run)
                        .bind(node)
                        .fetch_all(&self.$reader)
                        .await?;
                rows.into_iter()
                    .map(|(i, s, j)| Ok((i, s.parse().map_err(StoreError::Corrupt)?, j)))
                    .collect()
            }

            async fn request_run_cancel(&self, id: RunId, now: i64) -> Result<RunState> {
                use super::workflow_sql as w;
                let mut tx = self.$writer.begin().await?;
                let state: Option<String> = sqlx::query_scalar(AssertSqlSafe($sql(w::RUN_STATE)))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if !w::cancel_decision(id, state)? {
                    return Ok(RunState::Cancelling);
                }
                sqlx::query(AssertSqlSafe($sql(w::REQUEST_CANCEL)))
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                self.announce(vec![Notice::Run(id), Notice::RunRequest(id)])
                    .await;
                Ok(RunState::Running)
            }

            async fn run_events(&self, id: RunId, after: i64, limit: u32) -> Result<Vec<RunEvent>> {
                let rows: Vec<RunEventRow> =
                    sqlx::query_as(AssertSqlSafe($sql(super::workflow_sql::RUN_EVENTS)))
                        .bind(id)
                        .bind(after)
                        .bind(i64::from(limit))
                        .fetch_all(&self.$reader)
                        .await?;
                rows.into_iter().map(RunEventRow::into_event).collect()
            }
        }
    };
}

/// `?` placeholders as Postgres writes them: `$1`, `$2`, …
pub(super) fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            super::postgres_placeholders("UPDATE t SET a = ? WHERE id = ? AND rev = ?"),
            "UPDATE t SET a = $1 WHERE id = $2 AND rev = $3"
        );
    }
}
