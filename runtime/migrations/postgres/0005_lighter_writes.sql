-- Lighter writes per job, for group commits of thousands of jobs a second.
--
-- events and attempts lose their foreign keys to jobs. Postgres checked each inserted row with
-- a query of its own (a constraint trigger): four per job, about a fifth of the time of the
-- statement that completes a job. Only the store writes these rows, always for a job whose row
-- it holds locked in the same transaction, and retention deletes them with their job (see
-- `prune`), so the keys guarded nothing the store does not already keep.
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_job_id_fkey;
ALTER TABLE attempts DROP CONSTRAINT IF EXISTS attempts_job_id_fkey;

-- Most jobs have no idempotency key, yet every version of every job row (three per job at
-- least: queued, running, ended) added a NULL entry to the key's unique index.
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_idempotency_key_key;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency_key ON jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
