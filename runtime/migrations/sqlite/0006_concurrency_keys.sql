-- Concurrency keys. A job submitted with `concurrency_key` holds one of its key's places from
-- when it is admitted until it ends; at most its `concurrency_limit` jobs of a key hold places
-- at once. A job that finds its key full waits (`waits_on_key = 1`, out of `jobs_queued`, so
-- it holds no slot and blocks no other job) until an end frees a place; the waiting jobs of a
-- key are admitted by priority, then run_at, then age.
ALTER TABLE jobs ADD COLUMN concurrency_key TEXT;
ALTER TABLE jobs ADD COLUMN concurrency_limit INTEGER;
ALTER TABLE jobs ADD COLUMN waits_on_key INTEGER NOT NULL DEFAULT 0;
DROP INDEX jobs_queued;
CREATE INDEX jobs_queued ON jobs (queue, priority DESC, run_at, id)
    WHERE state = 'queued' AND waits_on_key = 0;
CREATE INDEX jobs_waiting_on_key ON jobs (concurrency_key, priority DESC, run_at, id)
    WHERE waits_on_key = 1;

-- Each key with admitted or waiting jobs: how many of each (a key with neither has no row).
CREATE TABLE concurrency_keys (
    key      TEXT PRIMARY KEY,
    active   INTEGER NOT NULL,
    waiting  INTEGER NOT NULL
) WITHOUT ROWID;
