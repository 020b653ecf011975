-- Deliveries delivered or dead before $1, with their calls.
WITH d AS (
    DELETE FROM webhook_deliveries WHERE state <> 'pending' AND updated_at < $1 RETURNING id
), c AS (
    DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM d)
)
SELECT count(*) FROM d
