-- A job, with its settings' texts.
SELECT id, module_digest, state, priority, run_at, input,
       (SELECT s.limits FROM job_settings s WHERE s.key = jobs.settings) AS limits,
       (SELECT s.retry FROM job_settings s WHERE s.key = jobs.settings) AS retry,
       (SELECT s.grants FROM job_settings s WHERE s.key = jobs.settings) AS grants,
       idempotency_key, attempts, lost_attempts, deadline_at, worker, lease_until,
       cancel_requested, outcome, output, error, workflow_ref, input_from, created_at,
       updated_at, finished_at, queue, concurrency_key, concurrency_limit,
       EXISTS (SELECT 1 FROM key_waits w WHERE w.job_id = jobs.id) AS waits_on_key
FROM jobs
WHERE id = $1
