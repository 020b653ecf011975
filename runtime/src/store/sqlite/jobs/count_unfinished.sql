-- Scheduled, queued and running jobs, each counted on its state's partial index (queued
-- jobs that wait for a place of their concurrency key on that of the waiting jobs).
SELECT (SELECT COUNT(*) FROM jobs INDEXED BY jobs_scheduled WHERE state = 'scheduled'),
       (SELECT COUNT(*) FROM jobs INDEXED BY jobs_queued WHERE state = 'queued' AND waits_on_key = 0)
       + (SELECT COUNT(*) FROM jobs INDEXED BY jobs_waiting_on_key
          WHERE waits_on_key = 1 AND state = 'queued'),
       (SELECT COUNT(*) FROM jobs INDEXED BY jobs_running WHERE state = 'running')
