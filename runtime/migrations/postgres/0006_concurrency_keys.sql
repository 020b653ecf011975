-- Concurrency keys. A job submitted with `concurrency_key` holds one of its key's places from
-- when it is admitted until it ends; at most its `concurrency_limit` jobs of a key hold places
-- at once. A job that finds its key full waits in `key_waits` instead of `job_queue` (so it
-- holds no slot and blocks no other job) until an end frees a place; the waiting jobs of a key
-- are admitted by priority, then run_at, then age.
ALTER TABLE jobs ADD COLUMN concurrency_key TEXT, ADD COLUMN concurrency_limit BIGINT;

-- Each key with admitted or waiting jobs: how many of each (a key with neither has no row).
-- Whoever admits or ends a keyed job takes an advisory lock on its key's hash first, then reads
-- and writes this row.
CREATE TABLE concurrency_keys (
    key      TEXT PRIMARY KEY,
    active   BIGINT NOT NULL,
    waiting  BIGINT NOT NULL
);

CREATE TABLE key_waits (
    job_id    BIGINT PRIMARY KEY,
    key       TEXT NOT NULL,
    lim       BIGINT NOT NULL,
    priority  BIGINT NOT NULL,
    run_at    BIGINT NOT NULL
);
CREATE INDEX key_waits_order ON key_waits (key, priority DESC, run_at, job_id);

-- Locks keys (a transaction-scoped advisory lock on each key's hash, in hash order: every
-- writer takes them in that order, after any job rows it locks).
CREATE FUNCTION wasmjobs_lock_keys(keys TEXT[]) RETURNS VOID
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(h)
    FROM (SELECT DISTINCT hashtextextended(k, 0) AS h FROM UNNEST(keys) AS k
          WHERE k IS NOT NULL ORDER BY 1) s;
END $$;

-- Jobs come to their keys (`keys[i]`, limit `limits[i]`; NULL: no key), in this order: returns
-- for each whether it waits. A job is admitted when its key has no waiting job and fewer
-- admitted jobs than its limit (`store/keys.rs`, `KeyCount::admit`). Locks the keys and reads
-- their counts after the locks (each statement of a function takes its own snapshot), then
-- writes each key's row once. The caller puts the jobs that wait in `key_waits`.
CREATE FUNCTION wasmjobs_admit(keys TEXT[], limits BIGINT[]) RETURNS BOOLEAN[]
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    waits BOOLEAN[];
BEGIN
    PERFORM wasmjobs_lock_keys(keys);
    WITH j AS (
        SELECT u.k, u.l, u.ord,
               row_number() OVER (PARTITION BY u.k ORDER BY u.ord) AS rn
        FROM UNNEST(keys, limits) WITH ORDINALITY AS u(k, l, ord)
    ), d AS (
        SELECT j.k, j.ord, COALESCE(c.active, 0) AS a, COALESCE(c.waiting, 0) AS w,
               j.k IS NOT NULL AND COALESCE(c.waiting, 0) = 0
               AND min(j.l - j.rn) OVER (PARTITION BY j.k ORDER BY j.rn) >= COALESCE(c.active, 0)
               AS admitted
        FROM j LEFT JOIN concurrency_keys c ON c.key = j.k
    ), counted AS (
        INSERT INTO concurrency_keys (key, active, waiting)
        SELECT k, max(a) + count(*) FILTER (WHERE admitted),
               max(w) + count(*) FILTER (WHERE NOT admitted)
        FROM d WHERE k IS NOT NULL GROUP BY k
        ON CONFLICT (key) DO UPDATE SET active = excluded.active, waiting = excluded.waiting
    )
    SELECT array_agg(k IS NOT NULL AND NOT admitted ORDER BY ord) INTO waits FROM d;
    RETURN waits;
END $$;

-- Admitted jobs of keys `ended` (a key once per job) ended: their places go to the first
-- waiting jobs that may take them (`KeyCount::release` and `promote`), which join the queue.
-- Returns each such job's queue row's `ready`, `run_at` and `deadline_at`.
CREATE FUNCTION wasmjobs_release(ended TEXT[])
RETURNS TABLE (ready BOOLEAN, run_at BIGINT, deadline_at BIGINT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    IF ended IS NULL OR cardinality(ended) = 0 THEN
        RETURN;
    END IF;
    PERFORM wasmjobs_lock_keys(ended);
    RETURN QUERY
    WITH e AS (
        SELECT k, count(*) AS n FROM UNNEST(ended) AS k WHERE k IS NOT NULL GROUP BY k
    ), kc AS (
        SELECT e.k, GREATEST(COALESCE(t.active, 0) - e.n, 0) AS a, COALESCE(t.waiting, 0) AS w,
               LEAST(e.n, COALESCE(t.waiting, 0)) AS look
        FROM e LEFT JOIN concurrency_keys t ON t.key = e.k
    ), cand AS (
        SELECT kc.k, kc.a, x.job_id, x.lim,
               row_number() OVER (PARTITION BY kc.k
                                  ORDER BY x.priority DESC, x.run_at, x.job_id) AS rn
        FROM (SELECT * FROM kc WHERE kc.look > 0) kc CROSS JOIN LATERAL (
            -- Only the keys with waiting jobs are looked up.
            SELECT w.job_id, w.lim, w.priority, w.run_at FROM key_waits w
            WHERE w.key = kc.k ORDER BY w.priority DESC, w.run_at, w.job_id LIMIT kc.look
        ) x
    ), pick AS (
        SELECT s.k, s.job_id
        FROM (SELECT cand.*, min(cand.lim - cand.rn) OVER (PARTITION BY cand.k ORDER BY cand.rn) AS m
              FROM cand) s
        WHERE s.m >= s.a
    ), gone AS (
        DELETE FROM key_waits w WHERE w.job_id IN (SELECT p.job_id FROM pick p)
        RETURNING w.job_id
    ), counts AS (
        SELECT kc.k, kc.a + COALESCE(p.n, 0) AS active, kc.w - COALESCE(p.n, 0) AS waiting
        FROM kc LEFT JOIN (SELECT pick.k, count(*) AS n FROM pick GROUP BY pick.k) p ON p.k = kc.k
    ), dropped AS (
        DELETE FROM concurrency_keys t USING counts
        WHERE t.key = counts.k AND counts.active = 0 AND counts.waiting = 0
    ), kept AS (
        UPDATE concurrency_keys t SET active = counts.active, waiting = counts.waiting
        FROM counts WHERE t.key = counts.k AND (counts.active <> 0 OR counts.waiting <> 0)
    )
    INSERT INTO job_queue (job_id, priority, run_at, deadline_at, ready, queue)
    SELECT j.id, j.priority, j.run_at, j.deadline_at, j.state = 'queued', j.queue
    FROM gone JOIN jobs j ON j.id = gone.job_id
    WHERE j.state IN ('queued', 'scheduled')
    RETURNING job_queue.ready, job_queue.run_at, job_queue.deadline_at;
END $$;
