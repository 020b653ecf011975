-- Events $1 given to the webhooks; those every sink has taken go.
WITH u AS (
    UPDATE outbox SET to_webhooks = FALSE WHERE id = ANY($1) RETURNING id, to_nats
)
DELETE FROM outbox WHERE id IN (SELECT id FROM u WHERE NOT to_nats)
