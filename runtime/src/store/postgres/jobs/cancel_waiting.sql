-- Cancels waiting job $3 at $1, with its `cancelled` event ($2, `history::tail`).
UPDATE jobs
SET state = 'cancelled', outcome = NULL, finished_at = $1, updated_at = $1,
    event_seq = event_seq + 1,
    history = history || '[' || (event_seq + 1) || ',' || $1 || ',' || $2 || chr(10)
WHERE id = $3
