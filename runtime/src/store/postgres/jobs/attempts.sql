-- What a job's attempts are read from: the ended ones, and the running one's columns.
SELECT ended_attempts, state, attempts, worker, attempt_started_at FROM jobs WHERE id = $1
