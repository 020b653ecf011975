-- Fails waiting jobs whose deadline passed, at the later of ?2 and their last transition.
-- Names its partial index: without statistics the planner would scan `jobs_state_id`.
UPDATE jobs INDEXED BY jobs_deadline
SET state = 'failed', error = ?1, finished_at = MAX(?2, updated_at), updated_at = MAX(?2, updated_at)
WHERE state IN ('queued', 'scheduled') AND deadline_at IS NOT NULL AND deadline_at <= ?2
RETURNING id, updated_at, concurrency_key, waits_on_key
