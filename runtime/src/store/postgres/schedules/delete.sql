DELETE FROM schedules WHERE id = $1 OR name = $2
