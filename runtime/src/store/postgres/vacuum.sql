-- Removes the queue's dead rows without waiting for a vacuum another node runs.
VACUUM (SKIP_LOCKED, TRUNCATE FALSE) job_queue, claims
