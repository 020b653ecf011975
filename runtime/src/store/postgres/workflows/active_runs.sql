SELECT id FROM workflow_runs WHERE state IN ('running', 'cancelling') ORDER BY id
