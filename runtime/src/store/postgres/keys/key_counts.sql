-- The admitted and waiting jobs of keys $1 (locked first: `lock_keys.sql`); a key with
-- neither has no row.
SELECT key, active, waiting FROM concurrency_keys WHERE key = ANY($1)
