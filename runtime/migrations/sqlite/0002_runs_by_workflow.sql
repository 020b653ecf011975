-- Listing a workflow's runs, newest first (GET /v1/workflow-runs?workflow=NAME).
CREATE INDEX workflow_runs_by_workflow ON workflow_runs (workflow, id);
