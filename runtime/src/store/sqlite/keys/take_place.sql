-- Job ?1 stops waiting for its key: it has a place (it is in the queue again), or it ended.
UPDATE jobs SET waits_on_key = 0 WHERE id = ?1
