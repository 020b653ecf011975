-- A run ($1 workflow, $2 version, $3 input, $4 deadline) with its nodes ($6 names, $7 module
-- digests), all pending, and its first event ($8).
WITH r AS (
    INSERT INTO workflow_runs (workflow, version, state, input, deadline_at, event_seq, created_at, updated_at)
    VALUES ($1, $2, 'running', $3, $4, 1, $5, $5)
    RETURNING id
), n AS (
    INSERT INTO workflow_nodes (run_id, node, module, state)
    SELECT r.id, u.node, u.module, 'pending' FROM r, UNNEST($6::text[], $7::text[]) AS u(node, module)
), e AS (
    INSERT INTO workflow_events (run_id, seq, kind, data, at) SELECT r.id, 1, 'run', $8, $5 FROM r
)
SELECT id FROM r
