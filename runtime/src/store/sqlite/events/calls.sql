SELECT delivery_id, n, at, status, latency_ms, error
FROM webhook_attempts WHERE delivery_id = ?1 ORDER BY n
