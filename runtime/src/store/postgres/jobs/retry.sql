-- Queues failed or cancelled job $4 again at $2 with settings $1 (its raised retry budget;
-- stored here if new) and its `queued` event ($3). Such a job has no queue row (every way
-- there takes it off the queue). $8: it waits for a place of its concurrency key instead.
WITH s AS (
    INSERT INTO job_settings (key, limits, retry, grants, used_at)
    VALUES ($1, $5, $6, $7, $2)
    ON CONFLICT (key) DO UPDATE SET used_at = excluded.used_at
), j AS (
    UPDATE jobs
    SET state = 'queued', settings = $1, run_at = $2, cancel_requested = FALSE, outcome = NULL,
        error = NULL, output = NULL, finished_at = NULL, deadline_at = NULL, updated_at = $2,
        event_seq = event_seq + 1,
        history = history || '[' || (event_seq + 1) || ',' || $2 || ',' || $3 || chr(10)
    WHERE id = $4
    RETURNING id, priority, run_at, queue, concurrency_key, concurrency_limit
), w AS (
    INSERT INTO key_waits (job_id, key, lim, priority, run_at)
    SELECT id, concurrency_key, concurrency_limit, priority, run_at FROM j WHERE $8
)
INSERT INTO job_queue (job_id, priority, run_at, deadline_at, ready, queue)
SELECT id, priority, run_at, NULL, TRUE, queue FROM j WHERE NOT $8
