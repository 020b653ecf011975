-- A job with an idempotency key ($10), its settings if not stored yet, its first event ($15)
-- in its row (in queue $16) and its queue row; or, with a concurrency key ($17, limit $18)
-- that has no place for it (`wasmjobs_admit`), its row in `key_waits`. Returns its id and
-- whether it waits.
WITH s AS (
    INSERT INTO job_settings (key, limits, retry, grants, used_at)
    VALUES ($6, $7, $8, $9, $13)
    ON CONFLICT (key) DO NOTHING
), a AS MATERIALIZED (
    SELECT CASE WHEN $17::text IS NULL THEN FALSE
                ELSE (wasmjobs_admit(ARRAY[$17::text], ARRAY[$18::bigint]))[1] END AS waits
), j AS (
    INSERT INTO jobs (module_digest, state, priority, run_at, input, settings, idempotency_key,
                      deadline_at, workflow_ref, input_from, created_at, updated_at, event_seq,
                      history, queue, concurrency_key, concurrency_limit)
    SELECT $1, $2, $3, $4, $5, $6, $10, $11, $12, $14, $13, $13, 1, $15, $16, $17, $18
    WHERE wasmjobs_modules_exist(ARRAY[$1::text])
    RETURNING id, priority, run_at, deadline_at, state, queue
), q AS (
    INSERT INTO job_queue (job_id, priority, run_at, deadline_at, ready, queue)
    SELECT id, priority, run_at, deadline_at, state = 'queued', queue FROM j
    WHERE NOT (SELECT waits FROM a)
), w AS (
    INSERT INTO key_waits (job_id, key, lim, priority, run_at)
    SELECT id, $17, $18, priority, run_at FROM j WHERE (SELECT waits FROM a)
)
SELECT id, (SELECT waits FROM a) FROM j
