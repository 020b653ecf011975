-- Appends events ($3 kinds, $4 data) to job $1's `events` at $2, numbered on from its last
-- seq.
WITH j AS (
    UPDATE jobs SET event_seq = event_seq + cardinality($3::text[]) WHERE id = $1
    RETURNING event_seq - cardinality($3::text[]) AS before
)
INSERT INTO events (job_id, seq, kind, data, at)
SELECT $1, j.before + u.ord, u.kind, u.data, $2
FROM j, UNNEST($3::text[], $4::text[]) WITH ORDINALITY AS u(kind, data, ord)
