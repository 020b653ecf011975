-- Schedule $1 submitted job $2, or started run $3 (its pending tick, if it was that one, is
-- done).
UPDATE schedules SET last_job = $2, last_run = $3, pending_tick = NULL WHERE id = $1
