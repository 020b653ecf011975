-- Queue ?1's settings as a process declares them: weight ?2, limits ?3 and ?4, paused if ?5
-- (never resumed by a declaration); a new rate starts with a full bucket (?6) at ?7.
INSERT INTO queues (name, weight, max_running, rate, paused, tokens, tokens_at, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
ON CONFLICT (name) DO UPDATE
SET weight = excluded.weight, max_running = excluded.max_running,
    paused = queues.paused OR excluded.paused,
    tokens = CASE WHEN queues.rate IS excluded.rate THEN queues.tokens ELSE excluded.tokens END,
    tokens_at = CASE WHEN queues.rate IS excluded.rate THEN queues.tokens_at ELSE excluded.tokens_at END,
    rate = excluded.rate, updated_at = excluded.updated_at
