-- What the ends of the running attempts of jobs $1 depend on, their rows locked in id order.
SELECT id, state, attempts, worker,
       (SELECT s.retry FROM job_settings s WHERE s.key = jobs.settings) AS retry,
       cancel_requested, deadline_at, lease_until, lost_attempts, concurrency_key
FROM jobs
WHERE id = ANY($1)
ORDER BY id
FOR UPDATE OF jobs
