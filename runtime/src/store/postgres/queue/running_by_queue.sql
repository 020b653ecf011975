-- How many jobs of each queue of $1 are running, through the claims (there are at most as
-- many as the nodes' slots; a job claimed twice is counted once).
SELECT jobs.queue, COUNT(*)
FROM (SELECT DISTINCT u.id FROM claims CROSS JOIN LATERAL unnest(claims.job_ids) AS u(id)) s
     JOIN jobs ON jobs.id = s.id
WHERE jobs.state = 'running' AND jobs.queue = ANY($1)
GROUP BY jobs.queue
