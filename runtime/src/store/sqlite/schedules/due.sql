SELECT id, name, cron, target, next_run_at, created_at, tz, overlap, last_job, pending_tick, last_run FROM schedules WHERE next_run_at <= ?1
