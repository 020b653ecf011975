SELECT id, name, cron, target, next_run_at, created_at, tz, overlap, last_job, pending_tick FROM schedules ORDER BY id
