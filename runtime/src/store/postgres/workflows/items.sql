SELECT idx, state, job_id FROM workflow_items WHERE run_id = $1 AND node = $2 ORDER BY idx
