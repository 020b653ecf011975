DELETE FROM webhook_deliveries WHERE webhook_id = ?1
