-- The settings and token buckets of the limited queues $1, locked in name order: claims
-- that may take from a limited queue go one at a time, so that each sees the others' running
-- jobs and tokens.
SELECT name, weight, max_running, rate, paused, tokens, tokens_at FROM queues
WHERE name = ANY($1) ORDER BY name FOR UPDATE
