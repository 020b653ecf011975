INSERT INTO webhook_attempts (delivery_id, n, at, status, latency_ms, error)
VALUES ($1, $2, $3, $4, $5, $6)
