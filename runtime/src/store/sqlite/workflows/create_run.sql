INSERT INTO workflow_runs (workflow, version, state, input, deadline_at, event_seq, created_at, updated_at)
VALUES (?1, ?2, 'running', ?3, ?4, 1, ?5, ?5)
RETURNING id
