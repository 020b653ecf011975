-- Pending deliveries due at ?1 of enabled webhooks, the longest due first.
SELECT d.id, d.webhook_id, d.event_id, d.payload, d.attempts, d.since, w.url, w.secret,
       w.failing_since
FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
WHERE d.state = 'pending' AND d.next_at <= ?1 AND w.enabled
ORDER BY d.next_at LIMIT ?2
