-- Job $1 of key $2 ended while it waited for a place (its key locked first): it leaves the
-- key's waiting jobs, and the key's row goes when nothing holds or waits for the key. Returns
-- whether it waited.
WITH w AS (
    DELETE FROM key_waits WHERE job_id = $1 RETURNING key
)
UPDATE concurrency_keys SET waiting = waiting - 1
WHERE key = $2 AND EXISTS (SELECT 1 FROM w)
RETURNING active = 0 AND waiting = 0 AS empty
