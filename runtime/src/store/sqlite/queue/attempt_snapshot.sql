-- What the end of attempt ?2 of job ?1 depends on, if it still runs (and, given ?3, under
-- worker ?3).
SELECT attempts, (SELECT s.retry FROM job_settings s WHERE s.key = jobs.settings),
       cancel_requested, deadline_at, updated_at, lost_attempts, attempt_started_at,
       concurrency_key
FROM jobs
WHERE id = ?1 AND state = 'running' AND attempts = ?2 AND (?3 IS NULL OR worker = ?3)
