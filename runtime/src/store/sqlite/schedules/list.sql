SELECT id, name, cron, target, next_run_at, created_at, tz FROM schedules ORDER BY id
