-- Node $2 of run $3, just planned again as pending, runs on input $1; returns it if it was.
UPDATE workflow_nodes SET input = $1
WHERE run_id = $3 AND node = $2 AND state = 'pending'
RETURNING node
