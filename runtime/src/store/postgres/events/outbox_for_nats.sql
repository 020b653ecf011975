-- The oldest events not yet published to NATS, locked: another publisher waits for them, so
-- that the events of one job go out in order.
SELECT id, kind, entity_id, state, module_digest, queue, workflow, run_id, attempts, outcome, error, created_at, at
FROM outbox WHERE to_nats ORDER BY id LIMIT $1
FOR UPDATE
