DELETE FROM webhook_deliveries WHERE state <> 'pending' AND updated_at < ?1
