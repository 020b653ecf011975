-- Scheduled and queued jobs through the queue and the jobs waiting for a place of their
-- concurrency key, running ones through the claims (`jobs` has no index on its state, and
-- what ended stays out of all three).
SELECT (SELECT COUNT(*) FROM job_queue q JOIN jobs ON jobs.id = q.job_id WHERE NOT q.ready AND jobs.state = 'scheduled')
       + (SELECT COUNT(*) FROM key_waits w JOIN jobs ON jobs.id = w.job_id WHERE jobs.state = 'scheduled'),
       (SELECT COUNT(*) FROM job_queue q JOIN jobs ON jobs.id = q.job_id WHERE q.ready AND jobs.state = 'queued')
       + (SELECT COUNT(*) FROM key_waits w JOIN jobs ON jobs.id = w.job_id WHERE jobs.state = 'queued'),
       (SELECT COUNT(*)
        FROM (SELECT DISTINCT u.id FROM claims CROSS JOIN LATERAL unnest(claims.job_ids) AS u(id)) s
             JOIN jobs ON jobs.id = s.id
        WHERE jobs.state = 'running')
