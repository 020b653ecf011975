-- A run's running `for_each` elements, each with its job's state and error.
SELECT i.node, i.idx, i.job_id, j.state AS job_state, j.error AS job_error
FROM workflow_items i JOIN jobs j ON j.id = i.job_id
WHERE i.run_id = $1 AND i.state = 'running'
ORDER BY i.node, i.idx
