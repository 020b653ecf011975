-- The events of the jobs `prune_jobs.sql` deletes.
DELETE FROM events WHERE job_id IN (
    SELECT id FROM jobs
    WHERE finished_at IS NOT NULL AND finished_at < ?1
      AND id NOT IN (SELECT input_from FROM jobs WHERE input_from IS NOT NULL AND finished_at IS NULL)
      AND (workflow_ref IS NULL OR workflow_ref NOT IN
           (SELECT CAST(id AS TEXT) FROM workflow_runs WHERE state IN ('running', 'cancelling')))
)
