-- A job's limits, retry policy and grants, kept once for all the jobs that share them (decision
-- 009).
--
-- Jobs submitted together nearly always carry the same three JSON texts, ~300 bytes that every
-- version of every job's row repeated: a job that ran once wrote them three times. Past
-- `shared_buffers` that width is what the scheduler pays for (docs/performance.md, the twelfth
-- and thirteenth sessions).
--
-- * `job_policies`: the three texts under `key`, the SHA-256 of
--   `wasmjobs-policy-1 NUL limits NUL retry NUL grants` (JSON text never holds a raw NUL), so a
--   key names its texts forever and a node may cache them without asking again. `used_at` is
--   when a submission last made sure the row is there; retention deletes a policy only when no
--   job refers to it and it was not used for a day past the retention age.
-- * `jobs.policy`: the key of the job's policy, or NULL when the job keeps its own texts (every
--   job stored before this version). The job's own `limits`, `retry` and `grants` hold `''`
--   when the policy's apply; a text of its own wins (a hand `retry` writes the job's own retry
--   policy and leaves the others shared).
--
-- (Adding a nullable column rewrites nothing.)
CREATE TABLE job_policies (
    key      BYTEA PRIMARY KEY,
    limits   TEXT NOT NULL,
    retry    TEXT NOT NULL,
    grants   TEXT NOT NULL,
    used_at  BIGINT NOT NULL
);
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS policy BYTEA;
