-- Gives attempt ?4 of job ?2, which worker ?3 runs, back to the queue uncharged.
UPDATE jobs
SET state = 'queued', worker = NULL, lease_until = NULL, attempts = attempts - 1,
    attempt_started_at = NULL, updated_at = MAX(?1, updated_at), event_seq = event_seq + 1
WHERE id = ?2 AND state = 'running' AND worker = ?3 AND attempts = ?4
RETURNING event_seq
