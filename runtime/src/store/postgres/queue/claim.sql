-- Claims up to $4 queued jobs for worker $1, with a lease until $2: chooses them from the
-- queues that have ready jobs and are not paused, at most each one's room ($9/$10: the node's
-- own for the queues it names, within what a limited queue's limits leave, computed by
-- `claim` under their rows' locks; $11 for the others), by weighted
-- fair share (`queues::fair_pick`: the next job is the one whose queue's (held + n) / weight
-- is least, $7/$8 being what this node holds of each queue); takes them off the queue (those
-- whose deadline passed stay for the sweep), marks them running with their attempt's start
-- (the later of $3 and the job's last transition; the attempt is written when it ends) and
-- appends their `running` events to their rows, records the claim (`claims`: how the rescuer
-- finds running jobs), deletes this node's claims $5 whose jobs have all ended, and lets the
-- transaction commit without waiting for its WAL flush.
--
-- The queues with ready jobs are found by seeking through `job_queue_claim` once per queue,
-- from its end: within a queue the entries the claims took (dead until the queue is vacuumed)
-- are at the front, its live ones at the back, so a backward seek meets a live one first.
-- The `jobs` update changes no indexed column, so it is HOT. The queue rows are chosen and
-- locked first (`= ANY(ARRAY(…))`), then taken by `ctid` (the queue has no key); a queue row
-- whose job is no longer queued is taken and dropped. The `running` event is written as
-- `history::tail` writes it (serde_json's object: keys in order, no spaces), by concatenation
-- (`json_build_object` costs the server ~1 µs a job more); $6 is the worker as a JSON string.
-- The limits and grants come back NULL: the node fills them in from the settings it knows.
WITH RECURSIVE ready_queues(queue) AS (
    (SELECT queue FROM job_queue WHERE ready ORDER BY queue DESC LIMIT 1)
    UNION ALL
    SELECT (SELECT n.queue FROM job_queue n WHERE n.ready AND n.queue < r.queue
            ORDER BY n.queue DESC LIMIT 1)
    FROM ready_queues r WHERE r.queue IS NOT NULL
), p AS (
    SELECT r.queue, COALESCE(s.weight, 1)::float8 AS weight, COALESCE(h.n, 0) AS held,
           LEAST($4, COALESCE(c.room, $11)) AS room
    FROM ready_queues r
    LEFT JOIN queues s ON s.name = r.queue
    LEFT JOIN UNNEST($7::text[], $8::bigint[]) AS h(queue, n) ON h.queue = r.queue
    LEFT JOIN UNNEST($9::text[], $10::bigint[]) AS c(queue, room) ON c.queue = r.queue
    WHERE r.queue IS NOT NULL AND NOT COALESCE(s.paused, FALSE)
), candidates AS (
    SELECT x.ctid, p.queue,
           (p.held + row_number() OVER (PARTITION BY p.queue
                                        ORDER BY x.priority DESC, x.run_at, x.job_id)) / p.weight AS share
    FROM p CROSS JOIN LATERAL (
        SELECT ctid, priority, run_at, job_id FROM job_queue
        WHERE ready AND queue = p.queue AND (deadline_at IS NULL OR deadline_at > $3)
        ORDER BY priority DESC, run_at, job_id LIMIT p.room
        FOR UPDATE SKIP LOCKED
    ) x
), q AS (
    DELETE FROM job_queue
    WHERE ctid = ANY(ARRAY(SELECT ctid FROM candidates ORDER BY share, queue LIMIT $4))
    RETURNING job_id
), c AS (
    UPDATE jobs
    SET state = 'running', worker = $1, lease_until = $2, attempts = attempts + 1,
        attempt_started_at = GREATEST($3, jobs.updated_at), updated_at = GREATEST($3, jobs.updated_at),
        event_seq = event_seq + 1,
        history = history || '[' || (event_seq + 1) || ',' || GREATEST($3, jobs.updated_at) || ','
                  || '{"attempt":' || (attempts + 1) || ',"state":"running","worker":' || $6::text
                  || '}]' || chr(10)
    FROM q WHERE jobs.id = q.job_id AND jobs.state = 'queued'
    RETURNING id, module_digest, priority, run_at, input, settings, NULL::text AS limits,
              NULL::text AS grants, attempts, deadline_at, input_from, event_seq, updated_at,
              (SELECT o.output FROM jobs o WHERE o.id = jobs.input_from) AS upstream_output,
              created_at, queue, concurrency_key IS NOT NULL AS keyed
), k AS (
    INSERT INTO claims (worker, job_ids, at) SELECT $1, array_agg(id), $3 FROM c HAVING count(*) > 0
    RETURNING id
), d AS (
    DELETE FROM claims WHERE id = ANY($5)
)
SELECT c.*, (SELECT id FROM k) AS claim_id,
       set_config('synchronous_commit', 'off', TRUE) AS synchronous_commit
FROM c
