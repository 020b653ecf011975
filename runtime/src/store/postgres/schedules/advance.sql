UPDATE schedules SET next_run_at = $1 WHERE id = $2
