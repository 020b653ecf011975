-- Job $1 stops waiting for a place of its key (it ended); returns its key if it waited.
DELETE FROM key_waits WHERE job_id = $1 RETURNING key
