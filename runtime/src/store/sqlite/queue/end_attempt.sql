-- Ends the running attempt of job ?11: its new state, the attempt's line appended to
-- `ended_attempts`, ?8 seqs reserved for its events; returns the last seq.
UPDATE jobs
SET state = ?1, outcome = ?2, error = ?3, output = ?4, worker = NULL, lease_until = NULL,
    run_at = COALESCE(?5, run_at), finished_at = ?6, updated_at = ?7, event_seq = event_seq + ?8,
    lost_attempts = lost_attempts + ?9, attempt_started_at = NULL,
    ended_attempts = ended_attempts || ?10
WHERE id = ?11
RETURNING event_seq
