-- Runs running and cancelling, on the index of active runs.
SELECT COUNT(*) FILTER (WHERE state = 'running'), COUNT(*) FILTER (WHERE state = 'cancelling')
FROM workflow_runs WHERE state IN ('running', 'cancelling')
