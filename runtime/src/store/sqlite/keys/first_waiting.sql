-- The first ?2 jobs waiting for a place of key ?1, in the order they take places: priority,
-- then run_at, then age; with their limits and states.
SELECT id, concurrency_limit, state FROM jobs INDEXED BY jobs_waiting_on_key
WHERE waits_on_key = 1 AND concurrency_key = ?1
ORDER BY priority DESC, run_at, id
LIMIT ?2
