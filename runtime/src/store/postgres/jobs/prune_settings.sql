-- Settings unused since $1 that no job kept ($2) refers to.
DELETE FROM job_settings WHERE used_at < $1 AND NOT (key = ANY($2))
