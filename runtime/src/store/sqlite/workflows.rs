//! The workflow service's tables: definitions, runs, their nodes, `for_each` elements and run
//! events. Each engine step is one transaction guarded by the run's `rev`, with the jobs it
//! submits (`workflow_step` has the logic both backends share).

use async_trait::async_trait;
use rusqlite::params;

use super::jobs::insert_jobs_tx;
use super::{SqliteStore, column, query, rows, scalar};
use crate::store::lifecycle::next_workflow;
use crate::store::model::*;
use crate::store::rows::{ItemRow, NodeRow, RunEventRow, RunRow, WorkflowRow};
use crate::store::workflow_step as step;
use crate::store::{Notice, Result, StoreError, WorkflowStore};

#[async_trait]
impl WorkflowStore for SqliteStore {
    async fn put_workflow(
        &self,
        name: &str,
        definition: &str,
        now: i64,
    ) -> Result<(WorkflowRecord, bool)> {
        self.write(|tx| {
            let latest: Option<WorkflowRow> =
                rows(tx, include_str!("workflows/latest_definition.sql"), [name])?.pop();
            let (record, created) = next_workflow(latest, name, definition, now)?;
            if created {
                tx.prepare_cached(include_str!("workflows/insert_definition.sql"))?
                    .execute(params![name, record.version, definition, now])?;
            }
            Ok((record, created))
        })
        .await
    }

    async fn get_workflow(
        &self,
        name: &str,
        version: Option<i64>,
    ) -> Result<Option<WorkflowRecord>> {
        let sql = include_str!("workflows/get_definition.sql");
        let row: Option<WorkflowRow> =
            self.read(|tx| Ok(rows(tx, sql, params![name, version])?.pop()))?;
        row.map(WorkflowRow::into_record).transpose()
    }

    async fn list_workflows(&self) -> Result<Vec<WorkflowRecord>> {
        let rows: Vec<WorkflowRow> =
            self.read(|tx| rows(tx, include_str!("workflows/list_definitions.sql"), []))?;
        rows.into_iter().map(WorkflowRow::into_record).collect()
    }

    async fn create_run(&self, run: NewRun, now: i64) -> Result<RunRecord> {
        let id = self
            .write(|tx| {
                let id: i64 = scalar(
                    tx,
                    include_str!("workflows/create_run.sql"),
                    params![run.workflow, run.version, run.input, run.deadline_at, now],
                )?
                .ok_or_else(|| StoreError::Corrupt("run insert returned no id".into()))?;
                let mut node = tx.prepare_cached(include_str!("workflows/create_node.sql"))?;
                for (name, module) in &run.nodes {
                    node.execute(params![id, name, module])?;
                }
                tx.prepare_cached(include_str!("workflows/create_run_event.sql"))?
                    .execute(params![id, step::run_created_event(&run), now])?;
                Ok(id)
            })
            .await?;
        self.notify([Notice::Run(id), Notice::RunRequest(id)]);
        Ok(step::created_run(id, run, now))
    }

    async fn get_run(&self, id: RunId) -> Result<Option<RunSnapshot>> {
        self.read(|tx| {
            let Some(run) = rows::<RunRow>(tx, include_str!("workflows/run.sql"), [id])?.pop()
            else {
                return Ok(None);
            };
            let nodes: Vec<NodeRow> = rows(tx, include_str!("workflows/run_nodes.sql"), [id])?;
            let items: Vec<ItemRow> = if nodes.iter().any(NodeRow::fans_out) {
                rows(tx, include_str!("workflows/running_items.sql"), [id])?
            } else {
                Vec::new()
            };
            step::snapshot(run, nodes, items).map(Some)
        })
    }

    async fn apply_run(
        &self,
        id: RunId,
        rev: i64,
        changes: RunChanges,
        now: i64,
    ) -> Result<Option<Vec<JobId>>> {
        let applied = self
            .write(|tx| {
                let (state, error, finished) = step::step_state(&changes, now);
                let n_events = changes.events.len() as i64;
                let last_seq: Option<i64> = scalar(
                    tx,
                    include_str!("workflows/step_run.sql"),
                    params![now, n_events, state, error, finished, id, rev],
                )?;
                let Some(last_seq) = last_seq else {
                    return Ok(None);
                };
                let (inserted, notices) = insert_jobs_tx(tx, step::step_jobs(&changes), now)?;
                let ids: Vec<JobId> = inserted.iter().map(|(j, _)| j.id).collect();
                let mut stmt = tx.prepare_cached(include_str!("workflows/upsert_node.sql"))?;
                for nw in step::node_writes(&changes, &ids) {
                    let n = nw.node;
                    stmt.execute(params![
                        id,
                        n.name,
                        n.module,
                        n.state.as_str(),
                        nw.job_id,
                        n.items_total,
                        n.items_next,
                        n.items_done,
                        n.items_failed,
                        n.output,
                        n.error,
                        n.started_at,
                        n.finished_at
                    ])?;
                }
                let mut stmt = tx.prepare_cached(include_str!("workflows/upsert_item.sql"))?;
                for (node, idx, state, input, job) in step::item_writes(&changes, &ids) {
                    stmt.execute(params![id, node, idx, state, input, job])?;
                }
                let mut stmt = tx.prepare_cached(include_str!("workflows/insert_run_event.sql"))?;
                let first = last_seq - n_events + 1;
                for (i, e) in changes.events.iter().enumerate() {
                    let data = e.data.to_string();
                    stmt.execute(params![id, first + i as i64, e.kind, data, now])?;
                }
                Ok(Some((ids, notices)))
            })
            .await?;
        let Some((ids, mut notices)) = applied else {
            return Ok(None);
        };
        notices.push(Notice::Run(id));
        self.notify(notices);
        Ok(Some(ids))
    }

    async fn runs_to_advance(&self, now: i64) -> Result<Vec<RunId>> {
        self.read(|tx| column(tx, include_str!("workflows/runs_to_advance.sql"), [now]))
    }

    async fn active_runs(&self) -> Result<Vec<RunId>> {
        self.read(|tx| column(tx, include_str!("workflows/active_runs.sql"), []))
    }

    async fn count_active_runs(&self) -> Result<[(RunState, u64); 2]> {
        let row = self.read(|tx| {
            Ok(tx
                .prepare_cached(include_str!("workflows/count_active_runs.sql"))?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?)
        })?;
        Ok(crate::store::rows::active_run_counts(row))
    }

    async fn pending_items(
        &self,
        run: RunId,
        node: &str,
        from: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>> {
        let sql = include_str!("workflows/pending_items.sql");
        self.read(|tx| {
            query(tx, sql, params![run, node, from, limit], |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
                ))
            })
        })
    }

    async fn item_outputs(&self, run: RunId, node: &str) -> Result<Vec<Option<Vec<u8>>>> {
        let sql = include_str!("workflows/item_outputs.sql");
        self.read(|tx| column(tx, sql, params![run, node]))
    }

    async fn items(&self, run: RunId, node: &str) -> Result<Vec<(i64, NodeState, Option<JobId>)>> {
        let rows: Vec<(i64, String, Option<i64>)> = self.read(|tx| {
            query(
                tx,
                include_str!("workflows/items.sql"),
                params![run, node],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
        })?;
        rows.into_iter()
            .map(|(i, s, j)| Ok((i, s.parse().map_err(StoreError::Corrupt)?, j)))
            .collect()
    }

    async fn retry_run(
        &self,
        id: RunId,
        deadline_at: Option<i64>,
        inputs: &[(String, Vec<u8>)],
        now: i64,
    ) -> Result<Vec<String>> {
        let nodes = self
            .write(|tx| {
                let state: Option<String> =
                    scalar(tx, include_str!("workflows/run_state.sql"), [id])?;
                step::retry_decision(id, state)?;
                let seq: i64 = scalar(
                    tx,
                    include_str!("workflows/retry_run.sql"),
                    params![id, now, deadline_at],
                )?
                .ok_or_else(|| StoreError::Conflict(format!("workflow run {id} changed")))?;
                let nodes: Vec<String> =
                    query(tx, include_str!("workflows/retry_nodes.sql"), [id], |r| {
                        r.get(0)
                    })?;
                tx.prepare_cached(include_str!("workflows/retry_items.sql"))?
                    .execute([id])?;
                for (node, input) in inputs {
                    let set: Option<String> = scalar(
                        tx,
                        include_str!("workflows/set_node_input.sql"),
                        params![input, node, id],
                    )?;
                    if set.is_none() {
                        return Err(step::not_retried(id, node));
                    }
                }
                tx.prepare_cached(include_str!("workflows/insert_run_event.sql"))?
                    .execute(params![
                        id,
                        seq,
                        "run",
                        step::retry_event(&nodes, inputs).to_string(),
                        now
                    ])?;
                Ok(nodes)
            })
            .await?;
        self.notify([Notice::Run(id), Notice::RunRequest(id)]);
        Ok(nodes)
    }

    async fn request_run_cancel(&self, id: RunId, now: i64) -> Result<RunState> {
        let requested = self
            .write(|tx| {
                let state: Option<String> =
                    scalar(tx, include_str!("workflows/run_state.sql"), [id])?;
                if !step::cancel_decision(id, state)? {
                    return Ok(false);
                }
                tx.prepare_cached(include_str!("workflows/request_cancel.sql"))?
                    .execute(params![now, id])?;
                Ok(true)
            })
            .await?;
        if !requested {
            return Ok(RunState::Cancelling);
        }
        self.notify([Notice::Run(id), Notice::RunRequest(id)]);
        Ok(RunState::Running)
    }

    async fn run_events(&self, id: RunId, after: i64, limit: u32) -> Result<Vec<RunEvent>> {
        let sql = include_str!("workflows/run_events.sql");
        let rows: Vec<RunEventRow> =
            self.read(|tx| rows(tx, sql, params![id, after, i64::from(limit)]))?;
        rows.into_iter().map(RunEventRow::into_event).collect()
    }

    async fn list_runs(&self, f: &RunFilter) -> Result<Vec<RunRecord>> {
        let sql = include_str!("workflows/list_runs.sql");
        let rows: Vec<RunRow> = self.read(|tx| {
            rows(
                tx,
                sql,
                params![
                    f.workflow,
                    f.state.map(RunState::as_str),
                    f.cursor,
                    i64::from(f.limit)
                ],
            )
        })?;
        rows.into_iter().map(RunRow::into_record).collect()
    }
}
