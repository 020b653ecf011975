-- A webhook's deliveries, newest first: in state ?2 if given, below id ?3 if given.
SELECT id, webhook_id, event_id, event_type, state, attempts, next_at, created_at, updated_at
FROM webhook_deliveries
WHERE webhook_id = ?1 AND (?2 IS NULL OR state = ?2) AND (?3 IS NULL OR id < ?3)
ORDER BY id DESC LIMIT ?4
