-- How many jobs of each queue are running (there are at most as many as the nodes' slots).
SELECT queue, COUNT(*) FROM jobs INDEXED BY jobs_running WHERE state = 'running' GROUP BY queue
