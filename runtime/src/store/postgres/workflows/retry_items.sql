-- The elements of run $1's for_each nodes that did not succeed, pending again without a job;
-- an element that was submitted gets its input back from its job (a submitted element's own
-- copy is dropped).
UPDATE workflow_items
SET state = 'pending',
    input = COALESCE(input, (SELECT j.input FROM jobs j WHERE j.id = workflow_items.job_id)),
    job_id = NULL
WHERE run_id = $1 AND state <> 'succeeded'
