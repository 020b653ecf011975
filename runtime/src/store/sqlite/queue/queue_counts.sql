-- Each queue's jobs that have not ended, by state.
SELECT queue, 'queued', COUNT(*) FROM jobs INDEXED BY jobs_queued WHERE state = 'queued' GROUP BY queue
UNION ALL
SELECT queue, state, COUNT(*) FROM jobs INDEXED BY jobs_state_id
WHERE state IN ('scheduled', 'running') GROUP BY queue, state
