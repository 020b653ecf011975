-- Every claim first fails the waiting jobs whose overall deadline passed. Without this index
-- that sweep read every queued and scheduled row, so a claim got slower as the queue grew.
CREATE INDEX jobs_deadline ON jobs (deadline_at)
    WHERE deadline_at IS NOT NULL AND state IN ('queued', 'scheduled');
