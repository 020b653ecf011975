-- Scheduled, queued and running jobs, each counted on its state's partial index.
SELECT (SELECT COUNT(*) FROM jobs INDEXED BY jobs_scheduled WHERE state = 'scheduled'),
       (SELECT COUNT(*) FROM jobs INDEXED BY jobs_queued WHERE state = 'queued'),
       (SELECT COUNT(*) FROM jobs INDEXED BY jobs_running WHERE state = 'running')
