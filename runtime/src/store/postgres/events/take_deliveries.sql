-- Takes pending deliveries due at $1 of enabled webhooks, the longest due first, each for
-- one sender (others skip them): due again at $3, the sender's lease.
WITH d AS (
    SELECT d.id FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
    WHERE d.state = 'pending' AND d.next_at <= $1 AND w.enabled
    ORDER BY d.next_at LIMIT $2
    FOR UPDATE OF d SKIP LOCKED
), u AS (
    UPDATE webhook_deliveries SET next_at = $3 FROM d WHERE webhook_deliveries.id = d.id
    RETURNING webhook_deliveries.*
)
SELECT u.id, u.webhook_id, u.event_id, u.payload, u.attempts, u.since, w.url, w.secret,
       w.failing_since
FROM u JOIN webhooks w ON w.id = u.webhook_id
