//! The workflow service's tables: definitions, runs, their nodes, `for_each` elements and run
//! events. Each engine step is one transaction guarded by the run's `rev`, with the jobs it
//! submits (`workflow_step` has the logic both backends share).

use async_trait::async_trait;

use super::PgStore;
use super::jobs::insert_jobs_tx;
use crate::store::lifecycle::next_workflow;
use crate::store::model::*;
use crate::store::rows::{ItemRow, NodeRow, RunEventRow, RunRow, WorkflowRow};
use crate::store::workflow_step as step;
use crate::store::{Notice, Result, StoreError, WorkflowStore};

#[async_trait]
impl WorkflowStore for PgStore {
    async fn put_workflow(
        &self,
        name: &str,
        definition: &str,
        now: i64,
    ) -> Result<(WorkflowRecord, bool)> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(include_str!("workflows/lock_name.sql"))
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let latest: Option<WorkflowRow> =
            sqlx::query_as(include_str!("workflows/latest_definition.sql"))
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let (record, created) = next_workflow(latest, name, definition, now)?;
        if !created {
            return Ok((record, false));
        }
        sqlx::query(include_str!("workflows/insert_definition.sql"))
            .bind(name)
            .bind(record.version)
            .bind(definition)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((record, true))
    }

    async fn get_workflow(
        &self,
        name: &str,
        version: Option<i64>,
    ) -> Result<Option<WorkflowRecord>> {
        let row: Option<WorkflowRow> = sqlx::query_as(include_str!("workflows/get_definition.sql"))
            .bind(name)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?;
        row.map(WorkflowRow::into_record).transpose()
    }

    async fn list_workflows(&self) -> Result<Vec<WorkflowRecord>> {
        let rows: Vec<WorkflowRow> = sqlx::query_as(include_str!("workflows/list_definitions.sql"))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(WorkflowRow::into_record).collect()
    }

    async fn create_run(&self, run: NewRun, now: i64) -> Result<RunRecord> {
        let (names, modules): (Vec<&str>, Vec<&str>) = run
            .nodes
            .iter()
            .map(|(n, m)| (n.as_str(), m.as_str()))
            .unzip();
        let id: i64 = sqlx::query_scalar(include_str!("workflows/create_run.sql"))
            .bind(&run.workflow)
            .bind(run.version)
            .bind(&run.input)
            .bind(run.deadline_at)
            .bind(now)
            .bind(&names)
            .bind(&modules)
            .bind(step::run_created_event(&run))
            .fetch_one(&self.pool)
            .await?;
        self.notify([Notice::Run(id), Notice::RunRequest(id)]);
        Ok(step::created_run(id, run, now))
    }

    async fn get_run(&self, id: RunId) -> Result<Option<RunSnapshot>> {
        // One connection for the two or three reads (a pool use costs more than a read).
        let mut conn = self.pool.acquire().await?;
        let run: Option<RunRow> = sqlx::query_as(include_str!("workflows/run.sql"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(run) = run else { return Ok(None) };
        let nodes: Vec<NodeRow> = sqlx::query_as(include_str!("workflows/run_nodes.sql"))
            .bind(id)
            .fetch_all(&mut *conn)
            .await?;
        let items: Vec<ItemRow> = if nodes.iter().any(NodeRow::fans_out) {
            sqlx::query_as(include_str!("workflows/running_items.sql"))
                .bind(id)
                .fetch_all(&mut *conn)
                .await?
        } else {
            Vec::new()
        };
        step::snapshot(run, nodes, items).map(Some)
    }

    async fn apply_run(
        &self,
        id: RunId,
        rev: i64,
        changes: RunChanges,
        now: i64,
    ) -> Result<Option<Vec<JobId>>> {
        let mut tx = self.pool.begin().await?;
        let (state, error, finished) = step::step_state(&changes, now);
        let n_events = changes.events.len() as i64;
        let last_seq: Option<i64> = sqlx::query_scalar(include_str!("workflows/step_run.sql"))
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
            insert_jobs_tx(&mut tx, step::step_jobs(&changes), now).await?;
        let ids: Vec<JobId> = inserted.iter().map(|(j, _)| j.id).collect();
        let nodes = step::node_writes(&changes, &ids);
        if !nodes.is_empty() {
            let opt = |f: fn(&step::NodeWrite<'_>) -> Option<i64>| -> Vec<Option<i64>> {
                nodes.iter().map(f).collect()
            };
            let num =
                |f: fn(&step::NodeWrite<'_>) -> i64| -> Vec<i64> { nodes.iter().map(f).collect() };
            sqlx::query(include_str!("workflows/upsert_nodes.sql"))
                .bind(id)
                .bind(
                    nodes
                        .iter()
                        .map(|w| w.node.name.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    nodes
                        .iter()
                        .map(|w| w.node.module.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    nodes
                        .iter()
                        .map(|w| w.node.state.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(opt(|w| w.job_id))
                .bind(opt(|w| w.node.items_total))
                .bind(num(|w| w.node.items_next))
                .bind(num(|w| w.node.items_done))
                .bind(num(|w| w.node.items_failed))
                .bind(
                    nodes
                        .iter()
                        .map(|w| w.node.output.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    nodes
                        .iter()
                        .map(|w| w.node.error.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(opt(|w| w.node.started_at))
                .bind(opt(|w| w.node.finished_at))
                .execute(&mut *tx)
                .await?;
        }
        let items = step::item_writes(&changes, &ids);
        if !items.is_empty() {
            sqlx::query(include_str!("workflows/upsert_items.sql"))
                .bind(id)
                .bind(items.iter().map(|i| i.0).collect::<Vec<_>>())
                .bind(items.iter().map(|i| i.1).collect::<Vec<_>>())
                .bind(items.iter().map(|i| i.2).collect::<Vec<_>>())
                .bind(items.iter().map(|i| i.3).collect::<Vec<_>>())
                .bind(items.iter().map(|i| i.4).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
        }
        if !changes.events.is_empty() {
            let kinds: Vec<&str> = changes.events.iter().map(|e| e.kind).collect();
            let data: Vec<String> = changes.events.iter().map(|e| e.data.to_string()).collect();
            sqlx::query(include_str!("workflows/insert_run_events.sql"))
                .bind(id)
                .bind(last_seq - n_events + 1)
                .bind(now)
                .bind(&kinds)
                .bind(&data)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        notices.push(Notice::Run(id));
        self.notify(notices);
        Ok(Some(ids))
    }

    async fn runs_to_advance(&self, now: i64) -> Result<Vec<RunId>> {
        Ok(
            sqlx::query_scalar(include_str!("workflows/runs_to_advance.sql"))
                .bind(now)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn count_active_runs(&self) -> Result<[(RunState, u64); 2]> {
        let row = sqlx::query_as(include_str!("workflows/count_active_runs.sql"))
            .fetch_one(&self.pool)
            .await?;
        Ok(crate::store::rows::active_run_counts(row))
    }

    async fn active_runs(&self) -> Result<Vec<RunId>> {
        Ok(
            sqlx::query_scalar(include_str!("workflows/active_runs.sql"))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn pending_items(
        &self,
        run: RunId,
        node: &str,
        from: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>> {
        let rows: Vec<(i64, Option<Vec<u8>>)> =
            sqlx::query_as(include_str!("workflows/pending_items.sql"))
                .bind(run)
                .bind(node)
                .bind(from)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(i, input)| (i, input.unwrap_or_default()))
            .collect())
    }

    async fn item_outputs(&self, run: RunId, node: &str) -> Result<Vec<Option<Vec<u8>>>> {
        let rows: Vec<(Option<Vec<u8>>,)> =
            sqlx::query_as(include_str!("workflows/item_outputs.sql"))
                .bind(run)
                .bind(node)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(o,)| o).collect())
    }

    async fn items(&self, run: RunId, node: &str) -> Result<Vec<(i64, NodeState, Option<JobId>)>> {
        let rows: Vec<(i64, String, Option<i64>)> =
            sqlx::query_as(include_str!("workflows/items.sql"))
                .bind(run)
                .bind(node)
                .fetch_all(&self.pool)
                .await?;
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
        let mut tx = self.pool.begin().await?;
        let state: Option<String> = sqlx::query_scalar(include_str!("workflows/run_state.sql"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        step::retry_decision(id, state)?;
        let seq: i64 = sqlx::query_scalar(include_str!("workflows/retry_run.sql"))
            .bind(id)
            .bind(now)
            .bind(deadline_at)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::Conflict(format!("workflow run {id} changed")))?;
        let nodes: Vec<String> = sqlx::query_scalar(include_str!("workflows/retry_nodes.sql"))
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
        sqlx::query(include_str!("workflows/retry_items.sql"))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        for (node, input) in inputs {
            let set: Option<String> =
                sqlx::query_scalar(include_str!("workflows/set_node_input.sql"))
                    .bind(input)
                    .bind(node)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if set.is_none() {
                return Err(step::not_retried(id, node));
            }
        }
        sqlx::query(include_str!("workflows/insert_run_events.sql"))
            .bind(id)
            .bind(seq)
            .bind(now)
            .bind(["run"])
            .bind([step::retry_event(&nodes, inputs).to_string()])
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.notify([Notice::Run(id), Notice::RunRequest(id)]);
        Ok(nodes)
    }

    async fn request_run_cancel(&self, id: RunId, now: i64) -> Result<RunState> {
        let mut tx = self.pool.begin().await?;
        let state: Option<String> = sqlx::query_scalar(include_str!("workflows/run_state.sql"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if !step::cancel_decision(id, state)? {
            return Ok(RunState::Cancelling);
        }
        sqlx::query(include_str!("workflows/request_cancel.sql"))
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.notify([Notice::Run(id), Notice::RunRequest(id)]);
        Ok(RunState::Running)
    }

    async fn run_events(&self, id: RunId, after: i64, limit: u32) -> Result<Vec<RunEvent>> {
        let rows: Vec<RunEventRow> = sqlx::query_as(include_str!("workflows/run_events.sql"))
            .bind(id)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(RunEventRow::into_event).collect()
    }

    async fn list_runs(&self, f: &RunFilter) -> Result<Vec<RunRecord>> {
        let rows: Vec<RunRow> = sqlx::query_as(include_str!("workflows/list_runs.sql"))
            .bind(f.workflow.as_deref())
            .bind(f.state.map(RunState::as_str))
            .bind(f.cursor)
            .bind(i64::from(f.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(RunRow::into_record).collect()
    }
}
