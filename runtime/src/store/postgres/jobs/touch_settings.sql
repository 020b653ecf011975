-- Marks the settings of keys $1 used at $2 where their mark is older than $3 ms.
UPDATE job_settings SET used_at = $2 WHERE key = ANY($1) AND used_at < $2 - $3
