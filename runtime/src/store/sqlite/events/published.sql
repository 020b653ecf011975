UPDATE outbox SET to_nats = FALSE WHERE id = ?1
