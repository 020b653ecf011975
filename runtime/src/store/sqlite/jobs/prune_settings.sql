-- Settings no job refers to, unused since ?1.
DELETE FROM job_settings WHERE used_at < ?1 AND key NOT IN (SELECT settings FROM jobs)
