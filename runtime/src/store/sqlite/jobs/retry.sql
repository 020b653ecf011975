-- Queues a failed or cancelled job again, with settings ?1 (its raised retry budget).
UPDATE jobs
SET state = 'queued', settings = ?1, run_at = ?2, cancel_requested = FALSE, outcome = NULL,
    error = NULL, output = NULL, finished_at = NULL, deadline_at = NULL, updated_at = ?2
WHERE id = ?3
