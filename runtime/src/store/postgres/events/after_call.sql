-- A delivery after its call `n` ($3): its new state and when it is next due.
UPDATE webhook_deliveries SET state = $2, attempts = $3, next_at = $4, updated_at = $5
WHERE id = $1
