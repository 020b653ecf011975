-- The earliest scheduled time or deadline in the queue.
SELECT LEAST((SELECT MIN(run_at) FROM job_queue WHERE NOT ready),
             (SELECT MIN(deadline_at) FROM job_queue WHERE deadline_at IS NOT NULL))
