DELETE FROM webhook_attempts
WHERE delivery_id IN (SELECT id FROM webhook_deliveries WHERE state <> 'pending' AND updated_at < ?1)
