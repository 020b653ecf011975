-- Each queue's jobs that have not ended, by state: waiting ones through the queue, running
-- ones through the claims.
SELECT q.queue, jobs.state, COUNT(*)
FROM job_queue q JOIN jobs ON jobs.id = q.job_id
WHERE jobs.state IN ('queued', 'scheduled')
GROUP BY q.queue, jobs.state
UNION ALL
SELECT jobs.queue, jobs.state, COUNT(*)
FROM (SELECT DISTINCT u.id FROM claims CROSS JOIN LATERAL unnest(claims.job_ids) AS u(id)) s
     JOIN jobs ON jobs.id = s.id
WHERE jobs.state = 'running'
GROUP BY jobs.queue, jobs.state
