-- The running attempts of workers $1.
SELECT DISTINCT j.id, j.attempts, j.worker
FROM claims c CROSS JOIN LATERAL unnest(c.job_ids) AS u(id) JOIN jobs j ON j.id = u.id
WHERE c.worker = ANY($1) AND j.state = 'running' AND j.worker = c.worker
