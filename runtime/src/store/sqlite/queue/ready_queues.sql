-- The queues that have queued jobs, by name: a walk over `jobs_queued` that seeks past each
-- queue's entries (one seek per queue, however many jobs each holds).
WITH RECURSIVE q(name) AS (
    SELECT (SELECT MIN(queue) FROM jobs INDEXED BY jobs_queued WHERE state = 'queued' AND waits_on_key = 0)
    UNION ALL
    SELECT (SELECT MIN(queue) FROM jobs INDEXED BY jobs_queued
            WHERE state = 'queued' AND waits_on_key = 0 AND queue > q.name)
    FROM q WHERE q.name IS NOT NULL
)
SELECT name FROM q WHERE name IS NOT NULL
