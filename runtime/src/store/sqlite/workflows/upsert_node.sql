INSERT INTO workflow_nodes (run_id, node, module, state, job_id, items_total, items_next,
                            items_done, items_failed, output, error, started_at, finished_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
ON CONFLICT (run_id, node) DO UPDATE
SET state = excluded.state, job_id = COALESCE(excluded.job_id, workflow_nodes.job_id),
    items_total = excluded.items_total, items_next = excluded.items_next,
    items_done = excluded.items_done, items_failed = excluded.items_failed,
    output = excluded.output, error = excluded.error,
    started_at = excluded.started_at, finished_at = excluded.finished_at
