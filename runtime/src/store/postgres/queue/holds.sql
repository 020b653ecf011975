-- Whether worker $2 still runs attempt $3 of job $1.
SELECT id FROM jobs WHERE id = $1 AND state = 'running' AND worker = $2 AND attempts = $3
