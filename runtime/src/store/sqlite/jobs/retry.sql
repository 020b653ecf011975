-- Queues a failed or cancelled job again, with settings ?1 (its raised retry budget); ?4: it
-- waits for a place of its concurrency key.
UPDATE jobs
SET state = 'queued', settings = ?1, run_at = ?2, cancel_requested = FALSE, outcome = NULL,
    error = NULL, output = NULL, finished_at = NULL, deadline_at = NULL, updated_at = ?2,
    waits_on_key = ?4
WHERE id = ?3
