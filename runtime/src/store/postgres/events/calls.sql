SELECT delivery_id, n, at, status, latency_ms, error
FROM webhook_attempts WHERE delivery_id = ANY($1) ORDER BY delivery_id, n
