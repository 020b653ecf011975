-- Queued or scheduled jobs (state $1) newest first, through the queue.
SELECT id, module_digest, state, priority, run_at, input,
       (SELECT s.limits FROM job_settings s WHERE s.key = jobs.settings) AS limits,
       (SELECT s.retry FROM job_settings s WHERE s.key = jobs.settings) AS retry,
       (SELECT s.grants FROM job_settings s WHERE s.key = jobs.settings) AS grants,
       idempotency_key, attempts, lost_attempts, deadline_at, worker, lease_until,
       cancel_requested, outcome, output, error, workflow_ref, input_from, created_at,
       updated_at, finished_at, queue, concurrency_key, concurrency_limit,
       EXISTS (SELECT 1 FROM key_waits w WHERE w.job_id = jobs.id) AS waits_on_key
FROM (SELECT job_id FROM job_queue UNION ALL SELECT job_id FROM key_waits) s
     JOIN jobs ON jobs.id = s.job_id
WHERE state = $1 AND ($2::text IS NULL OR module_digest = $2) AND ($3::bigint IS NULL OR s.job_id < $3)
      AND ($5::text IS NULL OR queue = $5)
ORDER BY s.job_id DESC
LIMIT $4
