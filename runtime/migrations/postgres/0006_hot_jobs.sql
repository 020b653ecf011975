-- The queue and the running set move out of `jobs`, so that a job's own row is updated in place.
--
-- Postgres updates a row "HOT" (heap-only: the new version goes on the same page and no index
-- gets an entry) only when no indexed column changes, counting the columns a partial index's
-- predicate reads. Every index below read `state`, so each of a job's three row versions
-- (queued, running, ended) added an entry to four or five indexes, and each entry stayed until
-- a vacuum: about 60 µs a version here, against ~5 µs for a HOT update. Now the indexes of
-- `jobs` cover only columns that never change after the insert (id, module, upstream,
-- idempotency key), and two narrow tables, which only get inserts and deletes, hold what the
-- partial indexes held:
--
-- * `job_queue`: one row per job that is `queued` (`ready`) or `scheduled` (not yet ready),
--   in the claim order. Inserted with the job (or when it goes back to waiting), deleted by the
--   claim, a cancel or the deadline sweep.
-- * `running_jobs`: one row per `running` job, for the rescuer. Inserted by the claim, deleted
--   by the attempt's end.
--
-- Lock order, for every statement that touches both: a `job_queue` row before its `jobs` row,
-- and a `jobs` row before its `running_jobs` row.
--
-- A vacuum never truncates them (`vacuum_truncate`): truncating takes an exclusive lock, which
-- stalls every claim and submission behind it. The store vacuums them itself once it has taken
-- a few thousand rows off (`vacuum_queue` in store/postgres.rs).
CREATE TABLE job_queue (
    job_id       BIGINT PRIMARY KEY,
    priority     BIGINT NOT NULL,
    run_at       BIGINT NOT NULL,
    deadline_at  BIGINT,
    ready        BOOLEAN NOT NULL
) WITH (vacuum_truncate = false);
CREATE INDEX job_queue_claim ON job_queue (priority DESC, run_at, job_id) WHERE ready;
CREATE INDEX job_queue_waiting ON job_queue (run_at) WHERE NOT ready;
CREATE INDEX job_queue_deadline ON job_queue (deadline_at) WHERE deadline_at IS NOT NULL;
INSERT INTO job_queue (job_id, priority, run_at, deadline_at, ready)
SELECT id, priority, run_at, deadline_at, state = 'queued' FROM jobs WHERE state IN ('queued', 'scheduled');

CREATE TABLE running_jobs (
    job_id  BIGINT PRIMARY KEY
) WITH (vacuum_truncate = false);
INSERT INTO running_jobs (job_id) SELECT id FROM jobs WHERE state = 'running';

DROP INDEX IF EXISTS jobs_queued;
DROP INDEX IF EXISTS jobs_scheduled;
DROP INDEX IF EXISTS jobs_running;
DROP INDEX IF EXISTS jobs_state_id;
DROP INDEX IF EXISTS jobs_finished;
DROP INDEX IF EXISTS jobs_deadline;

-- Room on each page for a job's next versions: a HOT update needs its new version to fit on
-- the same page, and the page's dead versions are pruned as it is read, vacuum or not.
ALTER TABLE jobs SET (fillfactor = 50);
