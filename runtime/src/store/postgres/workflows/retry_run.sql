-- Puts failed or cancelled run $1 back to running at $2, with the deadline $3 (its timeout
-- from now) and one event's seq; returns the seq, or nothing when the run is not failed or
-- cancelled. Bumps rev, so that a step decided before the retry does not commit.
UPDATE workflow_runs
SET state = 'running', error = NULL, finished_at = NULL, cancel_requested = FALSE,
    deadline_at = $3, rev = rev + 1, event_seq = event_seq + 1, updated_at = $2
WHERE id = $1 AND state IN ('failed', 'cancelled')
RETURNING event_seq
