SELECT state FROM workflow_runs WHERE id = $1 FOR UPDATE
