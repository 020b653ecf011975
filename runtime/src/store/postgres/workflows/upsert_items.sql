-- A step's changed `for_each` elements of run $1 (one element of each array per element).
INSERT INTO workflow_items (run_id, node, idx, state, input, job_id)
SELECT $1, u.* FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::bytea[], $6::bigint[])
    AS u(node, idx, state, input, job_id)
ON CONFLICT (run_id, node, idx) DO UPDATE
SET state = excluded.state, input = excluded.input,
    job_id = COALESCE(excluded.job_id, workflow_items.job_id)
