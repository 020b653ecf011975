-- Claims whose jobs have all left `running` under their worker: none of their jobs can come
-- back to them (a job claimed again is in a claim of its own).
DELETE FROM claims c
WHERE NOT EXISTS (SELECT 1 FROM unnest(c.job_ids) AS u(id) JOIN jobs j ON j.id = u.id
                  WHERE j.state = 'running' AND j.worker = c.worker)
