-- A step's changed nodes of run $1 (one element of each array per node). The rows exist: an
-- upsert is a bulk update with one statement.
INSERT INTO workflow_nodes (run_id, node, module, state, job_id, items_total, items_next,
                            items_done, items_failed, output, error, started_at, finished_at)
SELECT $1, u.* FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
                           $7::bigint[], $8::bigint[], $9::bigint[], $10::bytea[], $11::text[],
                           $12::bigint[], $13::bigint[])
    AS u(node, module, state, job_id, items_total, items_next, items_done, items_failed,
         output, error, started_at, finished_at)
ON CONFLICT (run_id, node) DO UPDATE
SET state = excluded.state, job_id = COALESCE(excluded.job_id, workflow_nodes.job_id),
    items_total = excluded.items_total, items_next = excluded.items_next,
    items_done = excluded.items_done, items_failed = excluded.items_failed,
    output = excluded.output, error = excluded.error,
    started_at = excluded.started_at, finished_at = excluded.finished_at
