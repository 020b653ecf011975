-- Takes job $1 off the queue, if it is there. The queue has no key: its row is found through
-- the index that holds it, by the job's queue, priority and run_at (a waiting job's row is in
-- `job_queue_waiting`, a ready one's in `job_queue_claim`). A row this misses (the job was
-- requeued after this statement's snapshot) is harmless: whoever takes it checks the job.
WITH j AS (
    SELECT queue, priority, run_at FROM jobs WHERE id = $1
), ready AS (
    DELETE FROM job_queue q USING j
    WHERE q.ready AND q.queue = j.queue AND q.priority = j.priority AND q.run_at = j.run_at
          AND q.job_id = $1
)
DELETE FROM job_queue q USING j WHERE NOT q.ready AND q.run_at = j.run_at AND q.job_id = $1
