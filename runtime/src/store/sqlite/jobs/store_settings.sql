-- Stores a job's settings if they are not stored yet, and marks them used.
INSERT INTO job_settings (key, limits, retry, grants, used_at) VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (key) DO UPDATE SET used_at = excluded.used_at
