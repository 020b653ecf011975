UPDATE webhook_deliveries SET next_at = ?2 WHERE id = ?1
