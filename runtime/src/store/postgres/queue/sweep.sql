-- Fails the waiting jobs whose deadline passed (error $1, event $3) and queues the scheduled
-- jobs that came due (event $4), each at the later of $2 and its last transition. Returns each
-- job, whether it ended, and the concurrency key whose place an ended job held.
WITH expired_q AS (
    DELETE FROM job_queue
    WHERE ctid = ANY(ARRAY(SELECT ctid FROM job_queue
                           WHERE deadline_at IS NOT NULL AND deadline_at <= $2
                           FOR UPDATE SKIP LOCKED))
    RETURNING job_id
), expired AS (
    UPDATE jobs
    SET state = 'failed', error = $1, finished_at = GREATEST($2, jobs.updated_at),
        updated_at = GREATEST($2, jobs.updated_at), event_seq = event_seq + 1,
        history = history || '[' || (event_seq + 1) || ',' || GREATEST($2, jobs.updated_at) || ','
                  || $3 || chr(10)
    FROM expired_q WHERE jobs.id = expired_q.job_id AND jobs.state IN ('queued', 'scheduled')
    RETURNING id, concurrency_key
), due_q AS (
    UPDATE job_queue SET ready = TRUE
    WHERE ctid = ANY(ARRAY(SELECT ctid FROM job_queue
                           WHERE NOT ready AND run_at <= $2
                                 AND (deadline_at IS NULL OR deadline_at > $2)
                           FOR UPDATE SKIP LOCKED))
    RETURNING job_id
), due AS (
    UPDATE jobs
    SET state = 'queued', updated_at = GREATEST($2, jobs.updated_at), event_seq = event_seq + 1,
        history = history || '[' || (event_seq + 1) || ',' || GREATEST($2, jobs.updated_at) || ','
                  || $4 || chr(10)
    FROM due_q WHERE jobs.id = due_q.job_id AND jobs.state = 'scheduled'
    RETURNING id
)
SELECT id, TRUE, concurrency_key FROM expired UNION ALL SELECT id, FALSE, NULL FROM due
