-- Finished workflow runs (their nodes, elements and events go with them).
DELETE FROM workflow_runs WHERE finished_at IS NOT NULL AND finished_at < $1
