-- Scheduled and queued jobs through the queue, running ones through the claims (`jobs` has no
-- index on its state, and what ended stays out of both).
SELECT (SELECT COUNT(*) FROM job_queue q JOIN jobs ON jobs.id = q.job_id WHERE NOT q.ready AND jobs.state = 'scheduled'),
       (SELECT COUNT(*) FROM job_queue q JOIN jobs ON jobs.id = q.job_id WHERE q.ready AND jobs.state = 'queued'),
       (SELECT COUNT(*)
        FROM (SELECT DISTINCT u.id FROM claims CROSS JOIN LATERAL unnest(claims.job_ids) AS u(id)) s
             JOIN jobs ON jobs.id = s.id
        WHERE jobs.state = 'running')
