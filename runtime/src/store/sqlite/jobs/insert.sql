-- A new job with its first event (seq 1) in its history; ?16: it waits for a place of its
-- concurrency key ?14.
INSERT INTO jobs (module_digest, state, priority, run_at, input, settings, idempotency_key,
                  deadline_at, workflow_ref, input_from, created_at, updated_at, event_seq, history,
                  queue, concurrency_key, concurrency_limit, waits_on_key)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, 1, ?12, ?13, ?14, ?15, ?16)
RETURNING id
