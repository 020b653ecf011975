-- Queues scheduled jobs whose time came, at the later of ?1 and their last transition.
UPDATE jobs INDEXED BY jobs_scheduled SET state = 'queued', updated_at = MAX(?1, updated_at)
WHERE state = 'scheduled' AND run_at <= ?1
RETURNING id, updated_at
