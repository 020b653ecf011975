-- Each queue's jobs that have not ended, by state: waiting ones through the queue and the
-- jobs waiting for a place of their concurrency key, running ones through the claims.
SELECT jobs.queue, jobs.state, COUNT(*)
FROM (SELECT job_id FROM job_queue UNION ALL SELECT job_id FROM key_waits) q
     JOIN jobs ON jobs.id = q.job_id
WHERE jobs.state IN ('queued', 'scheduled')
GROUP BY jobs.queue, jobs.state
UNION ALL
SELECT jobs.queue, jobs.state, COUNT(*)
FROM (SELECT DISTINCT u.id FROM claims CROSS JOIN LATERAL unnest(claims.job_ids) AS u(id)) s
     JOIN jobs ON jobs.id = s.id
WHERE jobs.state = 'running'
GROUP BY jobs.queue, jobs.state
