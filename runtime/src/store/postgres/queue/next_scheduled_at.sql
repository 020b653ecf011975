SELECT MIN(run_at) FROM job_queue WHERE NOT ready
