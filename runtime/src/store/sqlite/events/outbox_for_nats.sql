-- The oldest events not yet published to NATS.
SELECT id, kind, entity_id, state, module_digest, queue, workflow, run_id, attempts, outcome, error, created_at, at
FROM outbox WHERE to_nats ORDER BY id LIMIT ?1
