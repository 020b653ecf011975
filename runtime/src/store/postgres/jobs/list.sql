-- Jobs newest first, optionally in state $1, of module $2, in queue $5, older than job $3. No index of
-- `jobs` reads the state: finished jobs are found by walking `jobs` from the newest (waiting
-- and running ones through the queue and the claims: `list_waiting.sql`, `list_running.sql`).
SELECT id, module_digest, state, priority, run_at, input,
       (SELECT s.limits FROM job_settings s WHERE s.key = jobs.settings) AS limits,
       (SELECT s.retry FROM job_settings s WHERE s.key = jobs.settings) AS retry,
       (SELECT s.grants FROM job_settings s WHERE s.key = jobs.settings) AS grants,
       idempotency_key, attempts, lost_attempts, deadline_at, worker, lease_until,
       cancel_requested, outcome, output, error, workflow_ref, input_from, created_at,
       updated_at, finished_at, queue, concurrency_key, concurrency_limit,
       EXISTS (SELECT 1 FROM key_waits w WHERE w.job_id = jobs.id) AS waits_on_key
FROM jobs
WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR module_digest = $2)
      AND ($3::bigint IS NULL OR id < $3)
      AND ($5::text IS NULL OR queue = $5)
ORDER BY id DESC
LIMIT $4
