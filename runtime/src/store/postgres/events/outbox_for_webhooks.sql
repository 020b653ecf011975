-- The oldest events not yet given to the webhooks, locked (others skip them).
SELECT id, kind, entity_id, state, module_digest, queue, workflow, run_id, attempts, outcome, error, created_at, at
FROM outbox WHERE to_webhooks ORDER BY id LIMIT $1
FOR UPDATE SKIP LOCKED
