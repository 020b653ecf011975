-- Sends a delivery again: pending, due now, its retry period starting now.
UPDATE webhook_deliveries SET state = 'pending', next_at = ?3, since = ?3, updated_at = ?3
WHERE id = ?2 AND webhook_id = ?1
RETURNING id, webhook_id, event_id, event_type, state, attempts, next_at, created_at, updated_at
