-- Records calls, one statement: each call ($1…$6: delivery, n, at, status, latency, error),
-- its delivery's new state and due time ($7, $8) at $9, and what the calls did to their
-- webhooks ($10…$12: webhook, whether one call succeeded, why to disable it), as
-- `webhook_after_call.sql` does for one.
WITH c AS (
    INSERT INTO webhook_attempts (delivery_id, n, at, status, latency_ms, error)
    SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                         $6::text[])
), d AS (
    UPDATE webhook_deliveries
    SET state = u.state, attempts = u.n, next_at = u.next_at, updated_at = $9
    FROM UNNEST($1::bigint[], $7::text[], $2::bigint[], $8::bigint[]) AS u(id, state, n, next_at)
    WHERE webhook_deliveries.id = u.id
)
UPDATE webhooks
SET failing_since = CASE WHEN w.ok THEN NULL ELSE COALESCE(webhooks.failing_since, $9) END,
    enabled = CASE WHEN w.disable IS NULL THEN webhooks.enabled ELSE FALSE END,
    disabled_reason = COALESCE(w.disable, webhooks.disabled_reason),
    updated_at = CASE WHEN w.disable IS NULL THEN webhooks.updated_at ELSE $9 END
FROM UNNEST($10::bigint[], $11::bool[], $12::text[]) AS w(id, ok, disable)
WHERE webhooks.id = w.id
