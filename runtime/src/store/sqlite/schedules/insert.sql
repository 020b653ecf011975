INSERT INTO schedules (name, cron, target, next_run_at, created_at, tz, overlap) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
RETURNING id, name, cron, target, next_run_at, created_at, tz, overlap, last_job, pending_tick, last_run
