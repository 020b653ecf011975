-- A step's guard (the run is still at rev $7), its new state, and $2 seqs for its events;
-- returns the last seq.
UPDATE workflow_runs
SET rev = rev + 1, updated_at = $1, event_seq = event_seq + $2,
    state = COALESCE($3, state), error = COALESCE($4, error), finished_at = COALESCE($5, finished_at)
WHERE id = $6 AND rev = $7
RETURNING event_seq
