-- A run's nodes, each with its job's state and error.
SELECT n.node, n.module, n.state, n.job_id, n.items_total, n.items_next, n.items_done,
       n.items_failed, n.output, n.error, n.started_at, n.finished_at,
       j.state AS job_state, j.error AS job_error, n.input
FROM workflow_nodes n LEFT JOIN jobs j ON j.id = n.job_id
WHERE n.run_id = ?1
ORDER BY n.node
