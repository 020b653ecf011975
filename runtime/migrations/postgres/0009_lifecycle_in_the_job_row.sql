-- A job's lifecycle is written into its own row: one row version per transition, and nothing
-- beside it (decision 008).
--
-- Until version 8 each job that ran once wrote eleven rows: its `jobs` row and two more
-- versions, a `job_queue` row and a `running_jobs` row (each inserted and deleted), an
-- `attempts` row and three `events` rows. Each row and each index entry costs the server a few
-- microseconds whatever its width; together they were ~50 µs of Postgres's CPU per job, twice
-- the budget of 45,000 jobs/s on two cores (docs/performance.md).
--
-- * `state_events`: the job's state changes, one line each, `seq TAB at TAB data` (data is the
--   event's JSON object, which never holds a raw tab or newline). The transaction that changes
--   the state appends its line to the same row version, so the history stays complete and
--   ordered by construction. Logs, progress and cancel requests still go to `events`, with
--   seqs from the same per-job counter (`event_seq`); reading a history merges the two by seq.
-- * `ended_attempts`: one line per ended attempt, a JSON array
--   `[attempt, worker, outcome, trap, error, fuel, peak memory, wall µs, started, finished]`,
--   written by the attempt's ending. The running attempt is shown from the job, as before.
--   Events and attempts stored before this version stay in their tables and are read with the
--   new ones.
-- * `claims`: one row per claim statement (the worker and the ids it took) instead of a
--   `running_jobs` row per job. The rescuer finds running jobs through it, and deletes the
--   rows whose jobs have all left `running` under that worker.
-- * `job_queue` loses its primary key: the claim and the sweep take rows by `ctid`, and a
--   cancel finds a job's row through the claim order index with the job's priority and
--   run_at. A queue row is a pointer; the job's row says whether it is still waiting, so
--   every statement that takes a queue row checks the job's state.
--
-- (Adding a column with a constant default rewrites nothing.)
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS state_events TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS ended_attempts TEXT NOT NULL DEFAULT '';

CREATE TABLE claims (
    id       BIGSERIAL PRIMARY KEY,
    worker   TEXT NOT NULL,
    job_ids  BIGINT[] NOT NULL,
    at       BIGINT NOT NULL
) WITH (vacuum_truncate = false);
INSERT INTO claims (worker, job_ids, at)
SELECT j.worker, array_agg(j.id ORDER BY j.id), 0
FROM running_jobs r JOIN jobs j ON j.id = r.job_id
WHERE j.state = 'running' AND j.worker IS NOT NULL
GROUP BY j.worker;
DROP TABLE running_jobs;

ALTER TABLE job_queue DROP CONSTRAINT IF EXISTS job_queue_pkey;
DROP INDEX IF EXISTS job_queue_waiting;
CREATE INDEX job_queue_waiting ON job_queue (run_at, job_id) WHERE NOT ready;

-- More room on each page for a job's next versions (it was 50): fewer updates miss their page
-- and add index entries (the scheduler benchmark ran ~8 % faster, with the table no larger
-- after 50,000 jobs: dead versions, not free space, are most of it until a vacuum).
ALTER TABLE jobs SET (fillfactor = 30);
