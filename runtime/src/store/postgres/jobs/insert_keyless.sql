-- A submission group of jobs without idempotency keys, in one statement: ids drawn from the
-- sequence, the settings not stored yet (those stored were touched first: retention keeps
-- them), the jobs with their first event in their rows (in queues $18), and their queue rows; ids come back in
-- the batch's order. Nothing at all when a name of $12 no longer points at the digest of $13
-- beside it. With $21, jobs with a concurrency key ($19, limit $20) come to their keys
-- (`wasmjobs_admit`, in the batch's order): one that finds no place waits in `key_waits`
-- instead of the queue. Returns each id and whether it waits.
WITH names_hold AS MATERIALIZED (
    SELECT NOT EXISTS (SELECT 1 FROM UNNEST($12::text[], $13::text[]) AS p(name, digest)
                       WHERE NOT EXISTS (SELECT 1 FROM module_names m
                                         WHERE m.name = p.name AND m.digest = p.digest)) AS ok
), admitted AS MATERIALIZED (
    SELECT CASE WHEN $21 AND (SELECT ok FROM names_hold)
                THEN wasmjobs_admit($19::text[], $20::bigint[]) END AS waits
), v AS MATERIALIZED (
    SELECT nextval('jobs_id_seq') AS id, u.*,
           COALESCE((SELECT waits FROM admitted)[u.ord], FALSE) AS waits
    FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bytea[], $6::bytea[],
                $7::bigint[], $8::text[], $9::bigint[], $10::text[], $18::text[], $19::text[],
                $20::bigint[])
         WITH ORDINALITY AS u(module_digest, state, priority, run_at, input, settings,
                              deadline_at, workflow_ref, input_from, event, queue,
                              concurrency_key, concurrency_limit, ord)
    -- Once per statement.
    WHERE (SELECT ok FROM names_hold)
), p AS (
    INSERT INTO job_settings (key, limits, retry, grants, used_at)
    SELECT k, l, r, g, $11
    FROM UNNEST($14::bytea[], $15::text[], $16::text[], $17::text[]) AS x(k, l, r, g)
    WHERE EXISTS (SELECT 1 FROM v)
    ON CONFLICT (key) DO NOTHING
), j AS (
    INSERT INTO jobs (id, module_digest, state, priority, run_at, input, settings, deadline_at,
                      workflow_ref, input_from, created_at, updated_at, event_seq, history, queue,
                      concurrency_key, concurrency_limit)
    SELECT id, module_digest, state, priority, run_at, input, settings, deadline_at,
           workflow_ref, input_from, $11, $11, 1, event, queue, concurrency_key,
           concurrency_limit
    FROM v
    -- Once per statement: fails it when a job names a module that is not stored.
    WHERE (SELECT wasmjobs_modules_exist($1::text[]))
), q AS (
    INSERT INTO job_queue (job_id, priority, run_at, deadline_at, ready, queue)
    SELECT id, priority, run_at, deadline_at, state = 'queued', queue FROM v WHERE NOT waits
), w AS (
    INSERT INTO key_waits (job_id, key, lim, priority, run_at)
    SELECT id, concurrency_key, concurrency_limit, priority, run_at FROM v WHERE waits
)
SELECT v.id, v.waits FROM v ORDER BY v.ord
