-- Jobs that finished before ?1, unless an unfinished job reads its output as input, or it
-- belongs to a workflow run still going (whose engine may read its output).
DELETE FROM jobs
WHERE finished_at IS NOT NULL AND finished_at < ?1
  AND id NOT IN (SELECT input_from FROM jobs WHERE input_from IS NOT NULL AND finished_at IS NULL)
  AND (workflow_ref IS NULL OR workflow_ref NOT IN
       (SELECT CAST(id AS TEXT) FROM workflow_runs WHERE state IN ('running', 'cancelling')))
