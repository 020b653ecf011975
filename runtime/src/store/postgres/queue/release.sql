-- Puts jobs $1 that worker $4 still holds at attempts $2 back in the queue at $3, their attempt
-- not charged, with their `queued` event ($5) appended to their rows.
WITH v AS (
    SELECT * FROM UNNEST($1::bigint[], $2::bigint[]) AS u(id, attempt)
), r AS (
    UPDATE jobs
    SET state = 'queued', worker = NULL, lease_until = NULL, attempts = jobs.attempts - 1,
        attempt_started_at = NULL, updated_at = GREATEST($3, jobs.updated_at),
        event_seq = jobs.event_seq + 1,
        history = jobs.history || '[' || (jobs.event_seq + 1) || ',' || GREATEST($3, jobs.updated_at)
                  || ',' || $5 || chr(10)
    FROM v
    WHERE jobs.id = v.id AND jobs.state = 'running' AND jobs.worker = $4 AND jobs.attempts = v.attempt
    RETURNING jobs.id, jobs.priority, jobs.run_at, jobs.deadline_at, jobs.queue
), q AS (
    INSERT INTO job_queue (job_id, priority, run_at, deadline_at, ready, queue)
    SELECT id, priority, run_at, deadline_at, TRUE, queue FROM r
)
SELECT id FROM r
