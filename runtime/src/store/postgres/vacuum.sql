-- Removes the queue's dead rows without waiting for a vacuum another node runs: the queue, the
-- claims, and the concurrency keys' counts and waiting jobs.
VACUUM (SKIP_LOCKED, TRUNCATE FALSE) job_queue, claims, concurrency_keys, key_waits
