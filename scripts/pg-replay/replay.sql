-- A replay of the Postgres store's three statements in SQL alone, to measure what the server
-- spends per job on them and on variants of them before building a design (docs/performance.md,
-- "The eleventh session"). Loaded by run.sh into a schema that holds the store's migrations.
--
-- CALL life(iters, variant): `iters` times, insert 1,000 jobs with one statement (as
-- `insert_keyless` does), then claim 256 at a time (`CLAIM`) and end each claim's jobs
-- `succeeded` (`ENDINGS`) until all 1,000 ran, committing after each statement. Returns the
-- seconds spent in the inserts, the claims and the endings. Variants:
--   cur       the statements as the store writes them (keep them in step with postgres.rs):
--             each job refers to its policy in `job_policies` (migration 0010);
--   inline    the same with each job's limits, retry and grants in its own row, as before
--             migration 0010;
--   seg       one queue row per insert statement holding its ids (`job_seg`); a claim takes a
--             slice of the first rows and updates or deletes them;
--   segnc     seg, and a claim that reads the jobs instead of rewriting their rows (the running
--             state would be read through `claims`); the ending is not fenced;
--   d010      decision 010 as built and measured in the sixteenth session, not landed
--             (docs/decisions/010-running-attempt-in-claims.patch): the claim reads the jobs and
--             records each one's attempt and place in its claim row; the ending is fenced by the
--             claim it names (looked up once per statement) and writes the `running` event with
--             the end. Needs the two `claims` columns below.
CREATE OR REPLACE PROCEDURE life(iters int, variant text, INOUT t_ins float8 DEFAULT 0, INOUT t_claim float8 DEFAULT 0, INOUT t_end float8 DEFAULT 0)
LANGUAGE plpgsql AS $$
DECLARE
  n int := 1000;
  a_mods text[]; a_states text[]; a_prios bigint[]; a_runs bigint[]; a_inputs bytea[]; a_limits text[]; a_retries text[]; a_grants text[];
  a_deadlines bigint[]; a_wrefs text[]; a_infrom bigint[]; a_evs text[]; a_pols bytea[];
  p_keys bytea[]; p_limits text[]; p_retries text[]; p_grants text[];
  now_ms bigint; ids bigint[]; claimed bigint[]; t0 timestamptz; k int; got int;
  e_attempt bigint[]; e_worker text[]; e_state text[]; e_outcome text[]; e_error text[]; e_output bytea[]; e_runat bigint[];
  e_fin bigint[]; e_n bigint[]; e_head text[]; e_sev text[];
  claim_id bigint; places int[]; e_claim bigint[];
BEGIN
  now_ms := (extract(epoch from clock_timestamp())*1000)::bigint;
  SELECT array_agg(('sha256:' || repeat('ab12', 16))::text), array_agg('queued'::text), array_agg(0::bigint), array_agg(now_ms), array_agg('\x7b7d'::bytea),
         array_agg(text '{"fuel":1000000000,"memory_bytes":67108864,"wall_time_ms":10000,"output_bytes":1048576,"log_bytes":65536,"stack_bytes":1048576,"instances":10,"tables":10}'),
         array_agg(text '{"max_attempts":3,"initial_backoff_ms":1000,"multiplier":2.0,"max_backoff_ms":300000,"jitter":0.2,"retry_on":null}'),
         array_agg(text '{"env":{},"files":[],"network":[]}'), array_agg(NULL::bigint), array_agg(NULL::text), array_agg(NULL::bigint),
         array_agg('1' || chr(9) || now_ms || chr(9) || 'state' || chr(9) || '{"state":"queued"}' || chr(10))
    INTO a_mods, a_states, a_prios, a_runs, a_inputs, a_limits, a_retries, a_grants, a_deadlines, a_wrefs, a_infrom, a_evs
    FROM generate_series(1, n);
  IF variant = 'inline' THEN
    SELECT array_agg(NULL::bytea) INTO a_pols FROM generate_series(1, n);
    p_keys := '{}'; p_limits := '{}'; p_retries := '{}'; p_grants := '{}';
  ELSE
    p_keys := ARRAY[sha256(convert_to(a_limits[1] || a_retries[1] || a_grants[1], 'UTF8'))];
    p_limits := a_limits[1:1]; p_retries := a_retries[1:1]; p_grants := a_grants[1:1];
    SELECT array_agg(p_keys[1]), array_agg(''::text), array_agg(''::text), array_agg(''::text)
      INTO a_pols, a_limits, a_retries, a_grants FROM generate_series(1, n);
  END IF;
  IF NOT EXISTS (SELECT 1 FROM modules) THEN
    INSERT INTO modules VALUES (a_mods[1], 2, 'w', '', '\x00', 0);
  END IF;
  FOR it IN 1..iters LOOP
    t0 := clock_timestamp();
    WITH v AS MATERIALIZED (
         SELECT nextval('jobs_id_seq') AS id, u.*
         FROM UNNEST(a_mods, a_states, a_prios, a_runs, a_inputs, a_limits, a_retries, a_grants, a_pols, a_deadlines, a_wrefs, a_infrom, a_evs)
              WITH ORDINALITY AS u(module_digest, state, priority, run_at, input, limits, retry,
                                   grants, policy, deadline_at, workflow_ref, input_from, event, ord)
     ), p AS (
         INSERT INTO job_policies (key, limits, retry, grants, used_at)
         SELECT pk, pl, pr, pg, now_ms
         FROM UNNEST(p_keys, p_limits, p_retries, p_grants) AS x(pk, pl, pr, pg)
         WHERE EXISTS (SELECT 1 FROM v)
         ON CONFLICT (key) DO NOTHING
     ), j AS (
         INSERT INTO jobs (id, module_digest, state, priority, run_at, input, limits, retry, grants, policy,
                           deadline_at, workflow_ref, input_from, created_at, updated_at, event_seq, state_events)
         SELECT id, module_digest, state, priority, run_at, input, limits, retry, grants, policy,
                deadline_at, workflow_ref, input_from, now_ms, now_ms, 1, event
         FROM v WHERE (SELECT wasmjobs_modules_exist(a_mods))
     ), q AS (
         INSERT INTO job_queue (job_id, priority, run_at, deadline_at, ready)
         SELECT id, priority, run_at, deadline_at, state = 'queued' FROM v WHERE variant NOT LIKE 'seg%'
     ), s AS (
         INSERT INTO job_seg (priority, run_at, job_ids) SELECT 0, now_ms, array_agg(id ORDER BY id) FROM v WHERE variant LIKE 'seg%' HAVING count(*) > 0
     )
     SELECT array_agg(v.id ORDER BY v.ord) INTO ids FROM v;
    COMMIT;
    t_ins := t_ins + extract(epoch from clock_timestamp() - t0);
    got := 0;
    WHILE got < n LOOP
      t0 := clock_timestamp();
      IF variant = 'd010' THEN
        WITH q AS (
             DELETE FROM job_queue
             WHERE ctid = ANY(ARRAY(SELECT ctid FROM job_queue
                                    WHERE ready AND (deadline_at IS NULL OR deadline_at > now_ms)
                                    ORDER BY priority DESC, run_at, job_id LIMIT 256 FOR UPDATE SKIP LOCKED))
             RETURNING job_id
         ), c AS (
             SELECT jobs.id, module_digest, priority, run_at, input, limits, grants, policy,
                    attempts + 1 AS attempts, deadline_at, input_from, event_seq, updated_at,
                    (SELECT o.output FROM jobs o WHERE o.id = jobs.input_from) AS upstream_output,
                    (row_number() OVER ())::int AS place
             FROM q JOIN jobs ON jobs.id = q.job_id WHERE jobs.state = 'queued'
         ), kk AS (
             INSERT INTO claims (worker, job_ids, attempts, at, lease_until)
             SELECT 'w1', array_agg(id ORDER BY place), array_agg(attempts::int ORDER BY place), now_ms, now_ms + 30000
             FROM c HAVING count(*) > 0
             RETURNING id
         )
        SELECT array_agg(id ORDER BY place), (SELECT id FROM kk), array_agg(place ORDER BY place) INTO claimed, claim_id, places FROM c;
      ELSIF variant = 'segnc' THEN
        WITH s AS (
          SELECT ctid AS sc, job_ids, taken FROM job_seg ORDER BY priority DESC, run_at, job_ids[1] LIMIT 4 FOR UPDATE SKIP LOCKED
        ), x AS (
          SELECT sc, id, o, row_number() OVER (ORDER BY sc, o) AS rn FROM s, unnest(job_ids[taken+1:]) WITH ORDINALITY AS u(id, o)
        ), pick AS (SELECT * FROM x WHERE rn <= 256),
        upd AS (UPDATE job_seg SET taken = taken + p.cnt FROM (SELECT sc, count(*) cnt FROM pick GROUP BY sc) p WHERE job_seg.ctid = p.sc),
        c AS (
         SELECT jobs.id, module_digest, priority, run_at, input, limits, grants, policy, attempts, deadline_at, input_from, event_seq, updated_at,
            (SELECT o.output FROM jobs o WHERE o.id = jobs.input_from) AS upstream_output
         FROM pick JOIN jobs ON jobs.id = pick.id WHERE jobs.state = 'queued'
        ), kk AS (INSERT INTO claims (worker, job_ids, at) SELECT 'w1', array_agg(id), now_ms FROM c HAVING count(*) > 0)
        SELECT array_agg(id ORDER BY id) INTO claimed FROM c;
        DELETE FROM job_seg WHERE cardinality(job_ids) <= taken;
      ELSIF variant = 'seg' THEN
        WITH s AS (
          SELECT ctid AS sc, job_ids, taken FROM job_seg ORDER BY priority DESC, run_at, job_ids[1] LIMIT 4 FOR UPDATE SKIP LOCKED
        ), x AS (
          SELECT sc, id, o, row_number() OVER (ORDER BY sc, o) AS rn FROM s, unnest(job_ids[taken+1:]) WITH ORDINALITY AS u(id, o)
        ), pick AS (SELECT * FROM x WHERE rn <= 256),
        upd AS (UPDATE job_seg SET taken = taken + p.cnt FROM (SELECT sc, count(*) cnt FROM pick GROUP BY sc) p WHERE job_seg.ctid = p.sc),
        c AS (
         UPDATE jobs SET state = 'running', worker = 'w1', lease_until = now_ms + 30000, attempts = attempts + 1,
                attempt_started_at = GREATEST(now_ms, jobs.updated_at), updated_at = GREATEST(now_ms, jobs.updated_at), event_seq = event_seq + 1,
                state_events = state_events || (event_seq + 1) || chr(9) || (GREATEST(now_ms, jobs.updated_at)) || chr(9) || ('state' || chr(9) || '{"attempt":' || (attempts + 1) || ',"state":"running","worker":' || '"w1"' || '}') || chr(10)
         FROM pick WHERE jobs.id = pick.id AND jobs.state = 'queued'
         RETURNING jobs.id, module_digest, priority, run_at, input, limits, grants, policy, attempts, deadline_at, input_from, event_seq, updated_at,
            (SELECT o.output FROM jobs o WHERE o.id = jobs.input_from) AS upstream_output
        ), kk AS (INSERT INTO claims (worker, job_ids, at) SELECT 'w1', array_agg(id), now_ms FROM c HAVING count(*) > 0)
        SELECT array_agg(id ORDER BY id) INTO claimed FROM c;
        DELETE FROM job_seg WHERE cardinality(job_ids) <= taken;
      ELSE
        WITH q AS (
             DELETE FROM job_queue
             WHERE ctid = ANY(ARRAY(SELECT ctid FROM job_queue
                                    WHERE ready AND (deadline_at IS NULL OR deadline_at > now_ms)
                                    ORDER BY priority DESC, run_at, job_id LIMIT 256 FOR UPDATE SKIP LOCKED))
             RETURNING job_id
         ), c AS (
         UPDATE jobs SET state = 'running', worker = 'w1', lease_until = now_ms + 30000, attempts = attempts + 1,
                attempt_started_at = GREATEST(now_ms, jobs.updated_at), updated_at = GREATEST(now_ms, jobs.updated_at), event_seq = event_seq + 1,
                state_events = state_events || (event_seq + 1) || chr(9) || (GREATEST(now_ms, jobs.updated_at)) || chr(9) || ('state' || chr(9) || '{"attempt":' || (attempts + 1) || ',"state":"running","worker":' || '"w1"' || '}') || chr(10)
         FROM q WHERE jobs.id = q.job_id AND jobs.state = 'queued'
         RETURNING id, module_digest, priority, run_at, input, limits, grants, policy, attempts, deadline_at, input_from, event_seq, updated_at,
            (SELECT o.output FROM jobs o WHERE o.id = jobs.input_from) AS upstream_output
        ), kk AS (INSERT INTO claims (worker, job_ids, at) SELECT 'w1', array_agg(id), now_ms FROM c HAVING count(*) > 0)
        SELECT array_agg(id ORDER BY id) INTO claimed FROM c;
      END IF;
      COMMIT;
      t_claim := t_claim + extract(epoch from clock_timestamp() - t0);
      k := coalesce(cardinality(claimed), 0);
      IF k = 0 THEN RAISE EXCEPTION 'nothing claimed (got %)', got; END IF;
      got := got + k;
      t0 := clock_timestamp();
      SELECT array_agg(1::bigint), array_agg('w1'::text), array_agg('succeeded'::text), array_agg('success'::text), array_agg(NULL::text),
             array_agg('\x7b7d'::bytea), array_agg(NULL::bigint), array_agg(now_ms), array_agg(1::bigint),
             array_agg('[1,"w1","success",null,null,12345,1114112,80,'::text), array_agg('state' || chr(9) || '{"outcome":"success","state":"succeeded"}')
        INTO e_attempt, e_worker, e_state, e_outcome, e_error, e_output, e_runat, e_fin, e_n, e_head, e_sev
        FROM generate_series(1, k);
      IF variant = 'd010' THEN
      SELECT array_agg(claim_id) INTO e_claim FROM generate_series(1, k);
      WITH v AS (
         SELECT * FROM UNNEST(claimed, e_attempt, e_worker, e_state, e_outcome, e_error, e_output, e_runat, e_fin, e_n, e_head, e_sev, e_claim, places)
              AS u(id, attempt, worker, state, outcome, error, output, run_at, finished_at, n, head, state_event, claim, place)
      ), cl AS MATERIALIZED (
         SELECT c.id, c.worker, c.at FROM claims c WHERE c.id = ANY(e_claim)
      ), w AS (
         SELECT v.*, cl.at AS claimed_at FROM v LEFT JOIN cl ON cl.id = v.claim AND cl.worker = v.worker
      ), j AS (
         UPDATE jobs SET state = w.state, outcome = w.outcome, error = w.error, output = w.output,
                worker = NULL, lease_until = NULL, run_at = COALESCE(w.run_at, jobs.run_at), attempts = w.attempt,
                finished_at = CASE WHEN w.finished_at IS NOT NULL THEN GREATEST(now_ms, jobs.updated_at, w.claimed_at) END,
                updated_at = GREATEST(now_ms, jobs.updated_at, w.claimed_at),
                event_seq = jobs.event_seq + w.n + (jobs.state = 'queued')::int,
                state_events = jobs.state_events
                    || CASE WHEN (jobs.state = 'queued') THEN
                           (jobs.event_seq + 1) || chr(9) || GREATEST(w.claimed_at, jobs.updated_at) || chr(9) || 'state' || chr(9)
                           || '{"attempt":' || w.attempt || ',"state":"running","worker":' || to_json(w.worker)::text || '}' || chr(10)
                       ELSE '' END
                    || (jobs.event_seq + w.n + (jobs.state = 'queued')::int) || chr(9) || GREATEST(now_ms, jobs.updated_at, w.claimed_at) || chr(9)
                    || w.state_event || chr(10),
                ended_attempts = jobs.ended_attempts || w.head
                    || CASE WHEN (jobs.state = 'queued') THEN GREATEST(w.claimed_at, jobs.updated_at) ELSE
                           COALESCE(jobs.attempt_started_at, (SELECT a.started_at FROM attempts a WHERE a.job_id = jobs.id AND a.attempt = w.attempt), now_ms) END
                    || ',' || GREATEST(now_ms, jobs.updated_at, w.claimed_at) || ']' || chr(10)
         FROM w
         WHERE jobs.id = w.id
               AND ((jobs.state = 'running' AND jobs.worker = w.worker AND jobs.attempts = w.attempt)
                    OR (jobs.state = 'queued' AND w.claimed_at IS NOT NULL AND jobs.attempts = w.attempt - 1))
         RETURNING jobs.id, jobs.event_seq, jobs.state, jobs.priority, jobs.run_at, jobs.deadline_at
      ), q AS (
         INSERT INTO job_queue (job_id, priority, run_at, deadline_at, ready)
         SELECT id, priority, run_at, deadline_at, state = 'queued' FROM j WHERE state IN ('queued', 'scheduled')
      )
      SELECT count(*) INTO k FROM j;
      IF k <> cardinality(claimed) THEN RAISE EXCEPTION 'd010 ended % of %', k, cardinality(claimed); END IF;
      ELSE
      WITH v AS (
         SELECT * FROM UNNEST(claimed, e_attempt, e_worker, e_state, e_outcome, e_error, e_output, e_runat, e_fin, e_n, e_head, e_sev)
              AS u(id, attempt, worker, state, outcome, error, output, run_at, finished_at, n, head, state_event)
      ), j AS (
         UPDATE jobs SET state = v.state, outcome = v.outcome, error = v.error, output = v.output,
                worker = NULL, lease_until = NULL, run_at = COALESCE(v.run_at, jobs.run_at),
                finished_at = CASE WHEN v.finished_at IS NOT NULL THEN GREATEST(now_ms, jobs.updated_at) END, updated_at = GREATEST(now_ms, jobs.updated_at),
                event_seq = jobs.event_seq + v.n,
                state_events = state_events || (jobs.event_seq + v.n) || chr(9) || GREATEST(now_ms, jobs.updated_at) || chr(9) || v.state_event || chr(10),
                ended_attempts = jobs.ended_attempts
                    || v.head || COALESCE(jobs.attempt_started_at, (SELECT a.started_at FROM attempts a WHERE a.job_id = jobs.id AND a.attempt = v.attempt), now_ms)
                                        || ',' || GREATEST(now_ms, jobs.updated_at) || ']' || chr(10)
         FROM v WHERE jobs.id = v.id AND ((jobs.worker = v.worker AND jobs.attempts = v.attempt) OR variant = 'segnc')
         RETURNING jobs.id, jobs.event_seq, jobs.state, jobs.priority, jobs.run_at, jobs.deadline_at
      ), q AS (
         INSERT INTO job_queue (job_id, priority, run_at, deadline_at, ready)
         SELECT id, priority, run_at, deadline_at, state = 'queued' FROM j WHERE state IN ('queued', 'scheduled')
      )
      SELECT count(*) INTO k FROM j;
      END IF;
      COMMIT;
      t_end := t_end + extract(epoch from clock_timestamp() - t0);
    END LOOP;
  END LOOP;
END $$;
-- The queue of the seg variants.
CREATE TABLE IF NOT EXISTS job_seg (priority bigint NOT NULL, run_at bigint NOT NULL, job_ids bigint[] NOT NULL, taken int NOT NULL DEFAULT 0) WITH (vacuum_truncate = false);
CREATE INDEX IF NOT EXISTS job_seg_claim ON job_seg (priority DESC, run_at, (job_ids[1]));
-- The columns of the d010 variant's claims (its migration 0012 was not landed).
ALTER TABLE claims ADD COLUMN IF NOT EXISTS attempts INT[], ADD COLUMN IF NOT EXISTS lease_until BIGINT;
