-- Sends payloads $2 on channel $1, and commits without waiting for the WAL flush.
SELECT pg_notify($1, p), set_config('synchronous_commit', 'off', TRUE) FROM UNNEST($2::text[]) AS p
