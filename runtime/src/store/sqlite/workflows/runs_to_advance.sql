-- Runs that need a step: never stepped, asked to cancel, past their deadline, or a job of
-- theirs (a node's or an element's) ended.
SELECT id FROM workflow_runs
WHERE state IN ('running', 'cancelling')
  AND (rev = 0 OR (state = 'running' AND (cancel_requested OR deadline_at <= ?1)))
UNION
SELECT n.run_id FROM workflow_nodes n JOIN jobs j ON j.id = n.job_id
WHERE n.state = 'running' AND j.state IN ('succeeded', 'failed', 'cancelled')
UNION
SELECT i.run_id FROM workflow_items i JOIN jobs j ON j.id = i.job_id
WHERE i.state = 'running' AND j.state IN ('succeeded', 'failed', 'cancelled')
