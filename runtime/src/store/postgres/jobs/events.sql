-- A job's events other than its state changes, after seq $2.
SELECT job_id, seq, kind, data, at FROM events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3
