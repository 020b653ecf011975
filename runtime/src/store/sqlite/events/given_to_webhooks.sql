UPDATE outbox SET to_webhooks = FALSE WHERE id = ?1
