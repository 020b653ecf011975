-- The schedules due at $1, locked: each tick fires on one node.
SELECT id, name, cron, target, next_run_at, created_at, tz, overlap, last_job, pending_tick, last_run FROM schedules WHERE next_run_at <= $1
FOR UPDATE SKIP LOCKED
