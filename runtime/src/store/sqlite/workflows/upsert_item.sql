INSERT INTO workflow_items (run_id, node, idx, state, input, job_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT (run_id, node, idx) DO UPDATE
SET state = excluded.state, input = excluded.input,
    job_id = COALESCE(excluded.job_id, workflow_items.job_id)
