SELECT key, limits, grants FROM job_settings WHERE key = ANY($1)
