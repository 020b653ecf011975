-- Queues scheduled jobs whose time came, at the later of ?1 and their last transition (a job
-- that waits for a place of its concurrency key stays scheduled until it has one).
UPDATE jobs INDEXED BY jobs_scheduled SET state = 'queued', updated_at = MAX(?1, updated_at)
WHERE state = 'scheduled' AND run_at <= ?1 AND waits_on_key = 0
RETURNING id, updated_at
