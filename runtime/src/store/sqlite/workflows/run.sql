SELECT id, workflow, version, state, input, error, cancel_requested, deadline_at, rev,
       created_at, updated_at, finished_at
FROM workflow_runs
WHERE id = ?1
