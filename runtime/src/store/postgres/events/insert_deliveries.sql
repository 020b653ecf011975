-- New deliveries, due now ($5): one per element of $1…$4 (webhook, event, type, body).
INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, payload, state, next_at, since,
                                created_at, updated_at)
SELECT w, e, t, p, 'pending', $5, $5, $5, $5
FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[]) AS u(w, e, t, p)
