-- Events every sink has taken.
DELETE FROM outbox WHERE id = ?1 AND NOT to_webhooks AND NOT to_nats
