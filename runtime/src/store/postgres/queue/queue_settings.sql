-- Every queue's stored settings and token bucket.
SELECT name, weight, max_running, rate, paused, tokens, tokens_at FROM queues ORDER BY name
