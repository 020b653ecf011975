-- Attempts that ended `lost` (their node died or lost its lease): counted apart from the job's
-- other attempts, against the retry policy's `max_lost`, so infrastructure crashes do not use up
-- a job's retries.
ALTER TABLE jobs ADD COLUMN lost_attempts BIGINT NOT NULL DEFAULT 0;

-- Nodes and when each last showed it could write (`GET /readyz` and the start-up check write
-- their row).
CREATE TABLE nodes (
    id       TEXT PRIMARY KEY,
    seen_at  BIGINT NOT NULL
);
