-- Named queues. Every job is in one (`default` unless its submission names another); a
-- node's claims share its slots between the queues that have work by their weights, and
-- each queue's jobs are claimed by priority, then run_at, then age.
ALTER TABLE jobs ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
DROP INDEX jobs_queued;
CREATE INDEX jobs_queued ON jobs (queue, priority DESC, run_at, id) WHERE state = 'queued';

-- A queue's settings, when it has any besides the defaults (weight 1, no limits, not
-- paused): written from the `[queues.NAME]` of the process that started last, and paused
-- or resumed through the API. A rate-limited queue's token bucket: `tokens` at `tokens_at`.
CREATE TABLE queues (
    name         TEXT PRIMARY KEY,
    weight       INTEGER NOT NULL DEFAULT 1,
    max_running  INTEGER,
    rate         TEXT,
    paused       BOOLEAN NOT NULL DEFAULT FALSE,
    tokens       REAL NOT NULL DEFAULT 0,
    tokens_at    INTEGER NOT NULL DEFAULT 0,
    updated_at   INTEGER NOT NULL
);
