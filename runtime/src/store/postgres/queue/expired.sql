-- Running attempts whose lease ran out before $1, but for jobs $2.
SELECT DISTINCT j.id, j.attempts, j.worker
FROM claims c CROSS JOIN LATERAL unnest(c.job_ids) AS u(id) JOIN jobs j ON j.id = u.id
WHERE j.state = 'running' AND j.worker = c.worker AND j.lease_until < $1 AND j.id <> ALL($2)
