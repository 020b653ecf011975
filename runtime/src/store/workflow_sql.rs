//! [`WorkflowStore`](super::WorkflowStore) for both backends, written once: the workflow
//! tables use no backend-specific SQL, only placeholders differ (`?` against `$1`), and each
//! backend passes a function that turns the text into its own (`sql!`).
//!
//! Every step of the engine is one transaction guarded by the run's `rev`: it writes the
//! node and element changes, the jobs it submits (through the backend's own job insert, so a
//! node's job exists iff its step committed) and the run's events.

/// `impl WorkflowStore for $store`: `$db` is the sqlx database, `$sql` turns `?` placeholders
/// into the backend's, `$insert_jobs` inserts jobs inside a transaction (returning the jobs
/// and the notices to send), `$writer`/`$reader` name the pools, `$announce` sends notices.
macro_rules! workflow_store {
    (
        $store:ty, $db:ty, sql: $sql:path, insert_jobs: $insert_jobs:path,
        writer: $writer:ident, reader: $reader:ident
    ) => {
        #[async_trait::async_trait]
        impl super::WorkflowStore for $store {
            async fn create_run(&self, run: NewRun, now: i64) -> Result<RunRecord> {
                let mut tx = self.$writer.begin().await?;
                let id: i64 = sqlx::query_scalar(AssertSqlSafe($sql(
                    "INSERT INTO workflow_runs (workflow, version, state, input, deadline_at, event_seq,
                                                created_at, updated_at)
                     VALUES (?, ?, 'running', ?, ?, 1, ?, ?) RETURNING id",
                )))
                .bind(&run.workflow)
                .bind(run.version)
                .bind(&run.input)
                .bind(run.deadline_at)
                .bind(now)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                for (node, module) in &run.nodes {
                    sqlx::query(AssertSqlSafe($sql(
                        "INSERT INTO workflow_nodes (run_id, node, module, state) VALUES (?, ?, ?, 'pending')",
                    )))
                    .bind(id)
                    .bind(node)
                    .bind(module)
                    .execute(&mut *tx)
                    .await?;
                }
                let data = serde_json::json!({
                    "state": RunState::Running,
                    "workflow": run.workflow,
                    "version": run.version,
                });
                sqlx::query(AssertSqlSafe($sql(
                    "INSERT INTO workflow_events (run_id, seq, kind, data, at) VALUES (?, 1, 'run', ?, ?)",
                )))
                .bind(id)
                .bind(data.to_string())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                self.announce(vec![Notice::Run(id), Notice::RunRequest(id)]).await;
                Ok(RunRecord {
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
                })
            }

            async fn get_run(&self, id: RunId) -> Result<Option<RunSnapshot>> {
                // One connection for the two or three reads (a pool use costs more than a read).
                let mut conn = self.$reader.acquire().await?;
                let run: Option<RunRow> = sqlx::query_as(AssertSqlSafe($sql(&format!(
                    "SELECT {RUN_COLUMNS} FROM workflow_runs WHERE id = ?"
                ))))
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
                let Some(run) = run else { return Ok(None) };
                let nodes: Vec<NodeRow> = sqlx::query_as(AssertSqlSafe($sql(
                    "SELECT n.node, n.module, n.state, n.job_id, n.items_total, n.items_next, n.items_done,
                            n.items_failed, n.output, n.error, n.started_at, n.finished_at,
                            j.state AS job_state, j.error AS job_error
                     FROM workflow_nodes n LEFT JOIN jobs j ON j.id = n.job_id
                     WHERE n.run_id = ? ORDER BY n.node",
                )))
                .bind(id)
                .fetch_all(&mut *conn)
                .await?;
                // Elements exist only for `for_each` nodes that started.
                let fans = nodes.iter().any(NodeRow::fans_out);
                let items: Vec<ItemRow> = if !fans { Vec::new() } else { sqlx::query_as(AssertSqlSafe($sql(
                    "SELECT i.node, i.idx, i.job_id, j.state AS job_state, j.error AS job_error
                     FROM workflow_items i JOIN jobs j ON j.id = i.job_id
                     WHERE i.run_id = ? AND i.state = 'running' ORDER BY i.node, i.idx",
                )))
                .bind(id)
                .fetch_all(&mut *conn)
                .await? };
                Ok(Some(RunSnapshot {
                    run: run.into_record()?,
                    nodes: nodes
                        .into_iter()
                        .map(NodeRow::into_record)
                        .collect::<Result<_>>()?,
                    running_items: items
                        .into_iter()
                        .map(ItemRow::into_record)
                        .collect::<Result<_>>()?,
                }))
            }

            async fn apply_run(
                &self,
                id: RunId,
                rev: i64,
                changes: RunChanges,
                now: i64,
            ) -> Result<Option<Vec<JobId>>> {
                let mut tx = self.$writer.begin().await?;
                // One statement: the guard, the new state, and room for the step's events.
                let (state, error, finished) = match &changes.state {
                    Some((s, e)) => (Some(s.as_str()), e.as_deref(), s.is_final().then_some(now)),
                    None => (None, None, None),
                };
                let n_events = changes.events.len() as i64;
                let last_seq: Option<i64> = sqlx::query_scalar(AssertSqlSafe($sql(
                    "UPDATE workflow_runs
                     SET rev = rev + 1, updated_at = ?, event_seq = event_seq + ?,
                         state = COALESCE(?, state), error = COALESCE(?, error),
                         finished_at = COALESCE(?, finished_at)
                     WHERE id = ? AND rev = ? RETURNING event_seq",
                )))
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
                let node_job_count = changes.node_jobs.len();
                let jobs: Vec<NewJob> = changes
                    .node_jobs
                    .iter()
                    .map(|(_, j)| j.clone())
                    .chain(changes.item_jobs.iter().map(|(_, _, j)| j.clone()))
                    .collect();
                let (inserted, mut notices) = $insert_jobs(&mut tx, jobs, now).await?;
                let ids: Vec<JobId> = inserted.iter().map(|(j, _)| j.id).collect();
                let node_job: std::collections::HashMap<&str, JobId> = changes
                    .node_jobs
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .zip(ids.iter().copied())
                    .collect();
                // Changed nodes in one statement per 200 (the rows exist: an upsert is a bulk
                // update that needs no statement per row).
                debug_assert!(changes
                    .node_jobs
                    .iter()
                    .all(|(j, _)| changes.nodes.iter().any(|n| &n.name == j)));
                for chunk in changes.nodes.chunks(200) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO workflow_nodes (run_id, node, module, state, job_id, items_total,
                             items_next, items_done, items_failed, output, error, started_at, finished_at) ",
                    );
                    q.push_values(chunk, |mut b, n| {
                        b.push_bind(id)
                            .push_bind(n.name.as_str())
                            .push_bind(n.module.as_str())
                            .push_bind(n.state.as_str())
                            .push_bind(node_job.get(n.name.as_str()).copied().or(n.job_id))
                            .push_bind(n.items_total)
                            .push_bind(n.items_next)
                            .push_bind(n.items_done)
                            .push_bind(n.items_failed)
                            .push_bind(n.output.as_deref())
                            .push_bind(n.error.as_deref())
                            .push_bind(n.started_at)
                            .push_bind(n.finished_at);
                    });
                    q.push(
                        " ON CONFLICT (run_id, node) DO UPDATE SET state = excluded.state,
                          job_id = COALESCE(excluded.job_id, workflow_nodes.job_id),
                          items_total = excluded.items_total, items_next = excluded.items_next,
                          items_done = excluded.items_done, items_failed = excluded.items_failed,
                          output = excluded.output, error = excluded.error,
                          started_at = excluded.started_at, finished_at = excluded.finished_at",
                    );
                    q.build().execute(&mut *tx).await?;
                }
                // Elements: new ones (pending, with their input), submitted ones (running, their
                // job; the input dropped) and ended ones, merged per element into one upsert.
                let mut items: std::collections::BTreeMap<(&str, i64), (&str, Option<&[u8]>, Option<JobId>)> =
                    std::collections::BTreeMap::new();
                for (node, idx, input) in &changes.new_items {
                    items.insert((node.as_str(), *idx), ("pending", Some(input.as_slice()), None));
                }
                for ((node, idx, _), job) in changes.item_jobs.iter().zip(&ids[node_job_count..]) {
                    items.insert((node.as_str(), *idx), ("running", None, Some(*job)));
                }
                for (node, idx, state) in &changes.item_states {
                    items.insert((node.as_str(), *idx), (state.as_str(), None, None));
                }
                let items: Vec<_> = items.into_iter().collect();
                for chunk in items.chunks(500) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO workflow_items (run_id, node, idx, state, input, job_id) ",
                    );
                    q.push_values(chunk, |mut b, ((node, idx), (state, input, job))| {
                        b.push_bind(id)
                            .push_bind(*node)
                            .push_bind(*idx)
                            .push_bind(*state)
                            .push_bind(*input)
                            .push_bind(*job);
                    });
                    q.push(
                        " ON CONFLICT (run_id, node, idx) DO UPDATE SET state = excluded.state,
                          input = excluded.input,
                          job_id = COALESCE(excluded.job_id, workflow_items.job_id)",
                    );
                    q.build().execute(&mut *tx).await?;
                }
                if !changes.events.is_empty() {
                    let (n, last) = (n_events, last_seq);
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO workflow_events (run_id, seq, kind, data, at) ",
                    );
                    q.push_values(changes.events.iter().enumerate(), |mut b, (i, e)| {
                        b.push_bind(id)
                            .push_bind(last - n + 1 + i as i64)
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
                Ok(sqlx::query_scalar(AssertSqlSafe($sql(
                    "SELECT id FROM workflow_runs
                     WHERE state IN ('running', 'cancelling')
                       AND (rev = 0 OR (state = 'running' AND (cancel_requested OR deadline_at <= ?)))
                     UNION
                     SELECT n.run_id FROM workflow_nodes n JOIN jobs j ON j.id = n.job_id
                     WHERE n.state = 'running' AND j.state IN ('succeeded', 'failed', 'cancelled')
                     UNION
                     SELECT i.run_id FROM workflow_items i JOIN jobs j ON j.id = i.job_id
                     WHERE i.state = 'running' AND j.state IN ('succeeded', 'failed', 'cancelled')",
                )))
                .bind(now)
                .fetch_all(&self.$reader)
                .await?)
            }

            async fn active_runs(&self) -> Result<Vec<RunId>> {
                Ok(sqlx::query_scalar(
                    "SELECT id FROM workflow_runs WHERE state IN ('running', 'cancelling') ORDER BY id",
                )
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
                let rows: Vec<(i64, Option<Vec<u8>>)> = sqlx::query_as(AssertSqlSafe($sql(
                    "SELECT idx, input FROM workflow_items
                     WHERE run_id = ? AND node = ? AND idx >= ? AND state = 'pending'
                     ORDER BY idx LIMIT ?",
                )))
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
                let rows: Vec<(Option<Vec<u8>>,)> = sqlx::query_as(AssertSqlSafe($sql(
                    "SELECT j.output FROM workflow_items i LEFT JOIN jobs j ON j.id = i.job_id
                     WHERE i.run_id = ? AND i.node = ? ORDER BY i.idx",
                )))
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
                let rows: Vec<(i64, String, Option<i64>)> = sqlx::query_as(AssertSqlSafe($sql(
                    "SELECT idx, state, job_id FROM workflow_items WHERE run_id = ? AND node = ? ORDER BY idx",
                )))
                .bind(run)
                .bind(node)
                .fetch_all(&self.$reader)
                .await?;
                rows.into_iter()
                    .map(|(i, s, j)| {
                        Ok((i, s.parse().map_err(StoreError::Corrupt)?, j))
                    })
                    .collect()
            }

            async fn job_output(&self, id: JobId) -> Result<Option<Vec<u8>>> {
                let out: Option<Option<Vec<u8>>> =
                    sqlx::query_scalar(AssertSqlSafe($sql("SELECT output FROM jobs WHERE id = ?")))
                        .bind(id)
                        .fetch_optional(&self.$reader)
                        .await?;
                Ok(out.flatten())
            }

            async fn request_run_cancel(&self, id: RunId, now: i64) -> Result<RunState> {
                let mut tx = self.$writer.begin().await?;
                let state: Option<String> = sqlx::query_scalar(AssertSqlSafe($sql(
                    "SELECT state FROM workflow_runs WHERE id = ?",
                )))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                let state: RunState = state
                    .ok_or(StoreError::NotFound {
                        what: "workflow run",
                        id: id.to_string(),
                    })?
                    .parse()
                    .map_err(StoreError::Corrupt)?;
                match state {
                    RunState::Running => {
                        sqlx::query(AssertSqlSafe($sql(
                            "UPDATE workflow_runs SET cancel_requested = TRUE, updated_at = ? WHERE id = ?",
                        )))
                        .bind(now)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await?;
                        self.announce(vec![Notice::Run(id), Notice::RunRequest(id)]).await;
                        Ok(RunState::Running)
                    }
                    RunState::Cancelling => Ok(state),
                    done => Err(StoreError::Conflict(format!(
                        "workflow run {id} already finished: it is {done}"
                    ))),
                }
            }

            async fn run_events(&self, id: RunId, after: i64, limit: u32) -> Result<Vec<RunEvent>> {
                let rows: Vec<RunEventRow> = sqlx::query_as(AssertSqlSafe($sql(
                    "SELECT run_id, seq, kind, data, at FROM workflow_events
                     WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                )))
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

/// SQLite takes `?` as written.
pub(super) fn sqlite_placeholders(sql: &str) -> String {
    sql.to_string()
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
