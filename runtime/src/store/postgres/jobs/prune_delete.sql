-- Deletes the jobs of $2 that are still to go (checked again under their rows' locks: a job
-- may have been retried since) with their events.
WITH j AS (
    DELETE FROM jobs
    WHERE id = ANY($2)
      AND finished_at IS NOT NULL AND finished_at < $1
      AND id NOT IN (SELECT input_from FROM jobs WHERE input_from IS NOT NULL AND finished_at IS NULL)
      AND (workflow_ref IS NULL OR workflow_ref NOT IN
           (SELECT CAST(id AS TEXT) FROM workflow_runs WHERE state IN ('running', 'cancelling')))
    RETURNING id
), e AS (
    DELETE FROM events WHERE job_id IN (SELECT id FROM j)
)
SELECT id FROM j
