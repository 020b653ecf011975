-- Schedule $1 submitted job $2 (its pending tick, if it was that one, is done).
UPDATE schedules SET last_job = $2, pending_tick = NULL WHERE id = $1
