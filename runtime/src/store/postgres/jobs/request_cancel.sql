UPDATE jobs SET cancel_requested = TRUE, updated_at = $1 WHERE id = $2
