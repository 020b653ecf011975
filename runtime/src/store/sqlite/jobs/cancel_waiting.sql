UPDATE jobs SET state = 'cancelled', outcome = NULL, finished_at = ?1, updated_at = ?1
WHERE id = ?2
