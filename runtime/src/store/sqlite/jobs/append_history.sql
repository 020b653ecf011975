-- Appends a state event's line to job ?2's history.
UPDATE jobs SET history = history || ?1 WHERE id = ?2
