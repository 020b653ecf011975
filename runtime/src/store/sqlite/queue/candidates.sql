-- Up to ?2 queued jobs of queue ?1 in claim order: priority, then run_at, then age.
SELECT id FROM jobs INDEXED BY jobs_queued
WHERE state = 'queued' AND waits_on_key = 0 AND queue = ?1
ORDER BY priority DESC, run_at, id
LIMIT ?2
