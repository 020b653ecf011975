-- A process's report ($1 node, $2 now, $3 slots, $4 busy) and the jobs it ended by minute
-- ($5 minutes, $6 succeeded, $7 failed, $8 cancelled: arrays of one length); drops minutes
-- before $9.
WITH n AS (
    INSERT INTO nodes (id, seen_at, slots, busy) VALUES ($1, $2, $3, $4)
    ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at, slots = excluded.slots, busy = excluded.busy
), m AS (
    INSERT INTO node_minutes (node, minute, succeeded, failed, cancelled)
    SELECT $1, * FROM UNNEST($5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[])
    ON CONFLICT (node, minute) DO UPDATE SET succeeded = node_minutes.succeeded + excluded.succeeded,
        failed = node_minutes.failed + excluded.failed, cancelled = node_minutes.cancelled + excluded.cancelled
)
DELETE FROM node_minutes WHERE minute < $9
