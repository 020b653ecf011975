-- Events $1 published to NATS; those every sink has taken go.
WITH u AS (
    UPDATE outbox SET to_nats = FALSE WHERE id = ANY($1) RETURNING id, to_webhooks
)
DELETE FROM outbox WHERE id IN (SELECT id FROM u WHERE NOT to_webhooks)
