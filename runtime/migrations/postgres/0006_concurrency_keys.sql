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
