-- When the next scheduled job comes due (one that waits for a place of its key waits for that).
SELECT MIN(run_at) FROM jobs WHERE state = 'scheduled' AND waits_on_key = 0
