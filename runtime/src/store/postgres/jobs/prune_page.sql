-- A page of jobs in id order after $2: whether each is to go (finished before $1, unless an
-- unfinished job reads its output as input, or it belongs to a workflow run still going), and
-- its settings.
SELECT id, created_at,
       finished_at IS NOT NULL AND finished_at < $1
       AND id NOT IN (SELECT input_from FROM jobs WHERE input_from IS NOT NULL AND finished_at IS NULL)
       AND (workflow_ref IS NULL OR workflow_ref NOT IN
            (SELECT CAST(id AS TEXT) FROM workflow_runs WHERE state IN ('running', 'cancelling')))
       AS doomed,
       settings
FROM jobs
WHERE id > $2
ORDER BY id
LIMIT $3
