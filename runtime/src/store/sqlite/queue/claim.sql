-- Claims the queued jobs ?4 (a JSON array of ids, chosen by `claim`) for worker ?1 with a
-- lease until ?2, starting an attempt of each at the later of ?3 and its last transition;
-- returns what the attempt needs (`ClaimRow`): the job, its settings' limits and grants, and
-- the output of the job whose output is its input.
UPDATE jobs
SET state = 'running', worker = ?1, lease_until = ?2, attempts = attempts + 1,
    updated_at = MAX(?3, updated_at), attempt_started_at = MAX(?3, updated_at),
    event_seq = event_seq + 1
WHERE id IN (SELECT value FROM json_each(?4)) AND state = 'queued'
RETURNING id, module_digest, priority, run_at, input, settings,
          (SELECT s.limits FROM job_settings s WHERE s.key = jobs.settings) AS limits,
          (SELECT s.grants FROM job_settings s WHERE s.key = jobs.settings) AS grants,
          attempts, deadline_at, input_from, event_seq, updated_at,
          (SELECT o.output FROM jobs o WHERE o.id = jobs.input_from) AS upstream_output,
          created_at, queue, concurrency_key IS NOT NULL AS keyed
