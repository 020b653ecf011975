-- Renews, to $1, the leases of the jobs of $3 that worker $2 runs and that no one else holds
-- locked, once half a lease is spent (the lease ends before $4), and never waits: a row held
-- is being completed, cancelled or rescued, and the next renewal comes long before the lease
-- runs out. Returns every job of $3 the worker still runs, and whether a cancel was requested.
WITH renewed AS (
    UPDATE jobs SET lease_until = $1
    WHERE id IN (SELECT id FROM jobs
                 WHERE id = ANY($3) AND state = 'running' AND worker = $2 AND lease_until < $4
                 FOR UPDATE SKIP LOCKED)
)
SELECT id, cancel_requested FROM jobs WHERE id = ANY($3) AND state = 'running' AND worker = $2
