SELECT MIN(run_at) FROM jobs WHERE state = 'scheduled'
