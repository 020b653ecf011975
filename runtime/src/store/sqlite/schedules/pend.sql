-- Schedule ?1 keeps tick ?2 until its last job ends (`queue_one`; a later tick replaces it).
UPDATE schedules SET pending_tick = ?2 WHERE id = ?1
