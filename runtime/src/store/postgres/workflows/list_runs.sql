-- Runs newest first, optionally of workflow $1, in state $2, older than run $3.
SELECT id, workflow, version, state, input, error, cancel_requested, deadline_at, rev,
       created_at, updated_at, finished_at
FROM workflow_runs
WHERE ($1::text IS NULL OR workflow = $1) AND ($2::text IS NULL OR state = $2)
      AND ($3::bigint IS NULL OR id < $3)
ORDER BY id DESC
LIMIT $4
