DELETE FROM outbox WHERE NOT to_webhooks AND NOT to_nats
