-- Plans again the nodes of run ?1 that did not succeed: a plain node (or a for_each node that
-- never fanned out) that failed, was cancelled or skipped goes back to pending without its job;
-- a for_each node that failed or was cancelled goes on running with its succeeded elements
-- kept and the others pending again (retry_items.sql), from the first of them. Returns the
-- names of the nodes planned again.
UPDATE workflow_nodes
SET state = CASE WHEN items_total IS NULL THEN 'pending' ELSE 'running' END,
    job_id = CASE WHEN items_total IS NULL THEN NULL ELSE job_id END,
    error = NULL, output = NULL, finished_at = NULL,
    started_at = CASE WHEN items_total IS NULL THEN NULL ELSE started_at END,
    items_done = COALESCE((SELECT COUNT(*) FROM workflow_items i
                           WHERE i.run_id = workflow_nodes.run_id AND i.node = workflow_nodes.node
                                 AND i.state = 'succeeded'), 0),
    items_failed = 0,
    items_next = COALESCE((SELECT MIN(i.idx) FROM workflow_items i
                           WHERE i.run_id = workflow_nodes.run_id AND i.node = workflow_nodes.node
                                 AND i.state <> 'succeeded'), items_total, 0)
WHERE run_id = ?1
  AND (state IN ('failed', 'cancelled') OR (state = 'skipped' AND items_total IS NULL))
RETURNING node
