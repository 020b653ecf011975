-- A step's events of run $1, numbered from $2, at $3.
INSERT INTO workflow_events (run_id, seq, kind, data, at)
SELECT $1, $2 + u.ord - 1, u.kind, u.data, $3
FROM UNNEST($4::text[], $5::text[]) WITH ORDINALITY AS u(kind, data, ord)
