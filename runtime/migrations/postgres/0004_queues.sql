-- Named queues. Every job is in one (`default` unless its submission names another); a
-- node's claims share its slots between the queues that have work by their weights, and
-- each queue's jobs are claimed by priority, then run_at, then age. The queue's name is
-- in the job's row and in its queue row.
ALTER TABLE jobs ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
ALTER TABLE job_queue ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
DROP INDEX job_queue_claim;
CREATE INDEX job_queue_claim ON job_queue (queue, priority DESC, run_at, job_id) WHERE ready;

-- A queue's settings, when it has any besides the defaults (weight 1, no limits, not
-- paused): written from the `[queues.NAME]` of the process that started last, and paused
-- or resumed through the API. A rate-limited queue's token bucket: `tokens` at `tokens_at`.
-- Claims that take jobs from a limited queue lock its row first.
CREATE TABLE queues (
    name         TEXT PRIMARY KEY,
    weight       BIGINT NOT NULL DEFAULT 1,
    max_running  BIGINT,
    rate         TEXT,
    paused       BOOLEAN NOT NULL DEFAULT FALSE,
    tokens       DOUBLE PRECISION NOT NULL DEFAULT 0,
    tokens_at    BIGINT NOT NULL DEFAULT 0,
    updated_at   BIGINT NOT NULL
);
