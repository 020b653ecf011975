-- A node's input given when its run was retried (`POST /v1/workflow-runs/{id}/retry` with
-- `inputs`): the node runs on it instead of what its upstreams (or the run) give it. NULL: the
-- input the plan computes.
ALTER TABLE workflow_nodes ADD COLUMN input BLOB;
