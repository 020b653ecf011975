-- Writes attempt endings (one element of $1…$11 and $17 per job): each job still held by the
-- ending's worker and attempt gets its new state at the later of $12 and its last transition,
-- with its state event and its ended attempt (`history::attempt_head` and the attempt's start
-- and end) appended to its row, and goes back on the queue when it is to be retried. The
-- attempts' own events ($13…$16: job, how far before the job's last seq, kind, data) go to
-- `events`, before the state event in seq. With $18, the jobs with concurrency keys that
-- ended hand their places on (`wasmjobs_release`). Returns the ids of the jobs written (the
-- others were fenced out) and, on each row, whether a job that took a place is queued, the
-- earliest `run_at` of those scheduled, and the earliest deadline among them. A job has a
-- worker exactly while it runs.
WITH v AS (
    SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::bytea[], $8::bigint[], $9::bigint[], $10::bigint[], $11::text[],
                         $17::text[])
         AS u(id, attempt, worker, state, outcome, error, output, run_at, finished_at, n,
              attempt_head, state_event)
), j AS (
    UPDATE jobs
    SET state = v.state, outcome = v.outcome, error = v.error, output = v.output,
        worker = NULL, lease_until = NULL, run_at = COALESCE(v.run_at, jobs.run_at),
        finished_at = CASE WHEN v.finished_at IS NOT NULL THEN GREATEST($12, jobs.updated_at) END,
        updated_at = GREATEST($12, jobs.updated_at),
        event_seq = jobs.event_seq + v.n,
        lost_attempts = jobs.lost_attempts + (v.outcome = 'lost')::int,
        history = jobs.history || '[' || (jobs.event_seq + v.n) || ','
                  || GREATEST($12, jobs.updated_at) || ',' || v.state_event || chr(10),
        ended_attempts = jobs.ended_attempts || v.attempt_head
                         || COALESCE(jobs.attempt_started_at, GREATEST($12, jobs.updated_at)) || ','
                         || GREATEST($12, jobs.updated_at) || ']' || chr(10)
    FROM v
    WHERE jobs.id = v.id AND jobs.worker = v.worker AND jobs.attempts = v.attempt
    RETURNING jobs.id, jobs.event_seq, jobs.state, jobs.priority, jobs.run_at, jobs.deadline_at,
              jobs.queue, jobs.concurrency_key
), r AS (
    -- Not called at all without $18 (a one-time filter).
    SELECT f.* FROM wasmjobs_release((SELECT array_agg(concurrency_key) FROM j
                                      WHERE concurrency_key IS NOT NULL
                                            AND state IN ('succeeded', 'failed', 'cancelled'))) f
    WHERE $18
), taken AS (
    SELECT COALESCE(bool_or(ready), FALSE) AS ready, min(run_at) FILTER (WHERE NOT ready) AS wake,
           min(deadline_at) AS deadline
    FROM r
), q AS (
    INSERT INTO job_queue (job_id, priority, run_at, deadline_at, ready, queue)
    SELECT id, priority, run_at, deadline_at, state = 'queued', queue FROM j WHERE state IN ('queued', 'scheduled')
), e AS (
    INSERT INTO events (job_id, seq, kind, data, at)
    SELECT u.job_id, j.event_seq - u.back, u.kind, u.data, $12
    FROM UNNEST($13::bigint[], $14::bigint[], $15::text[], $16::text[]) AS u(job_id, back, kind, data)
    JOIN j ON j.id = u.job_id
)
SELECT j.id, taken.ready, taken.wake, taken.deadline FROM j CROSS JOIN taken
