-- The calls of a webhook's deliveries.
DELETE FROM webhook_attempts
WHERE delivery_id IN (SELECT id FROM webhook_deliveries WHERE webhook_id = ?1)
