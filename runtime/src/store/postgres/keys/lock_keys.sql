-- Locks keys $1 for the rest of the transaction: a transaction-scoped advisory lock on each
-- key's hash, taken in hash order (every writer takes them in that order). No row is written:
-- a key's row is read after this, and written once, at the end.
SELECT count(pg_advisory_xact_lock(h))
FROM (SELECT DISTINCT hashtextextended(k, 0) AS h FROM UNNEST($1::text[]) AS k ORDER BY 1) s
