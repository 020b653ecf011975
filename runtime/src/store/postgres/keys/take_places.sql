-- Jobs $1 stop waiting for their keys and join the queue: ready when queued, waiting for
-- their time when scheduled (the sweep queues them).
WITH w AS (
    DELETE FROM key_waits WHERE job_id = ANY($1) RETURNING job_id
)
INSERT INTO job_queue (job_id, priority, run_at, deadline_at, ready, queue)
SELECT j.id, j.priority, j.run_at, j.deadline_at, j.state = 'queued', j.queue
FROM w JOIN jobs j ON j.id = w.job_id
WHERE j.state IN ('queued', 'scheduled')
RETURNING ready, run_at, deadline_at
