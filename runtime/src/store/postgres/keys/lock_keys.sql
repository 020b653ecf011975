-- Locks the rows of keys $1 (distinct, in name order: every writer takes them in that order),
-- creating those missing, and returns each one's admitted and waiting jobs.
INSERT INTO concurrency_keys (key, active, waiting)
SELECT k, 0, 0 FROM UNNEST($1::text[]) AS k
ON CONFLICT (key) DO UPDATE SET key = excluded.key
RETURNING key, active, waiting
