-- Each queue's jobs that have not ended, by state.
SELECT queue, 'queued', COUNT(*) FROM jobs INDEXED BY jobs_queued
WHERE state = 'queued' AND waits_on_key = 0 GROUP BY queue
UNION ALL
SELECT queue, 'queued', COUNT(*) FROM jobs INDEXED BY jobs_waiting_on_key
WHERE waits_on_key = 1 AND state = 'queued' GROUP BY queue
UNION ALL
SELECT queue, state, COUNT(*) FROM jobs INDEXED BY jobs_state_id
WHERE state IN ('scheduled', 'running') GROUP BY queue, state
