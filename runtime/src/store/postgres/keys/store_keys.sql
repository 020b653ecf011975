-- Keys $1 have $2 admitted and $3 waiting jobs; a key with neither loses its row.
WITH u AS (
    SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) AS u(key, active, waiting)
), gone AS (
    DELETE FROM concurrency_keys c USING u
    WHERE c.key = u.key AND u.active = 0 AND u.waiting = 0
)
INSERT INTO concurrency_keys (key, active, waiting)
SELECT key, active, waiting FROM u WHERE active <> 0 OR waiting <> 0
ON CONFLICT (key) DO UPDATE SET active = excluded.active, waiting = excluded.waiting
