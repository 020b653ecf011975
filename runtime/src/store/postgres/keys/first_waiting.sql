-- The first $2[i] jobs waiting for a place of key $1[i], in the order they take places:
-- priority, then run_at, then age; with their limits.
SELECT k.key, w.job_id, w.lim
FROM UNNEST($1::text[], $2::bigint[]) AS k(key, n)
CROSS JOIN LATERAL (
    SELECT job_id, lim FROM key_waits WHERE key = k.key
    ORDER BY priority DESC, run_at, job_id LIMIT k.n
) w
