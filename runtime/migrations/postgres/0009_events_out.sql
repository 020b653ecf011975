-- Events out (docs/events.md): webhooks, the outbox their deliveries and the NATS publisher
-- read, and each delivery with its attempts.

-- A webhook: events whose type matches one of `events` (a list between commas, each a type
-- `job.succeeded` or a kind's wildcard `job.*`, `run.*`), and whose job or run matches the
-- filters given (`module`: a name or digest; `workflow`: a workflow's name; `queue`), are
-- delivered to `url`, signed with `secret`. `failing_since`: its deliveries have failed
-- since then, none succeeded; it is disabled (`enabled` false, `disabled_reason`) once that
-- lasts too long.
CREATE TABLE webhooks (
    id              BIGSERIAL PRIMARY KEY,
    url             TEXT NOT NULL,
    events          TEXT NOT NULL,
    module          TEXT,
    workflow        TEXT,
    queue           TEXT,
    description     TEXT,
    include_output  BOOLEAN NOT NULL DEFAULT FALSE,
    secret          TEXT NOT NULL,
    enabled         BOOLEAN NOT NULL DEFAULT TRUE,
    disabled_reason TEXT,
    failing_since   BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

-- What else takes events besides webhooks: `nats` while a process publishes them to NATS
-- (`seen_at`: its publishers renew it every minute; a sink not seen for a day is dropped,
-- with what it had not published).
CREATE TABLE event_sinks (
    name     TEXT PRIMARY KEY,
    seen_at  BIGINT NOT NULL
);

-- Events written in the transaction of the change they tell of, while something takes them:
-- a job's or a run's new state (`kind` 'job' or 'run', `state`) with what the webhooks'
-- filters and the payload need. `to_webhooks`: not yet turned into deliveries; `to_nats`:
-- not yet published. A row both have taken is deleted. Ids are never used twice, as receivers
-- dedupe on them.
CREATE TABLE outbox (
    id             BIGSERIAL PRIMARY KEY,
    kind           TEXT NOT NULL,
    entity_id      BIGINT NOT NULL,
    state          TEXT NOT NULL,
    module_digest  TEXT,
    queue          TEXT,
    workflow       TEXT,
    run_id         BIGINT,
    attempts       BIGINT,
    outcome        TEXT,
    error          TEXT,
    created_at     BIGINT NOT NULL,
    at             BIGINT NOT NULL,
    to_webhooks    BOOLEAN NOT NULL,
    to_nats        BOOLEAN NOT NULL
);
CREATE INDEX outbox_webhooks ON outbox (id) WHERE to_webhooks;
CREATE INDEX outbox_nats ON outbox (id) WHERE to_nats;

-- One event for one webhook: `pending` (due at `next_at`; a sender that takes it moves
-- `next_at` past the call's end, as its lease), `delivered` or `dead`. Its body is fixed when
-- it is made. `since`: when its retry period started (its creation, or a redelivery by hand).
CREATE TABLE webhook_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    webhook_id      BIGINT NOT NULL,
    event_id        BIGINT NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_at         BIGINT NOT NULL,
    since           BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_of ON webhook_deliveries (webhook_id, id);
CREATE INDEX webhook_deliveries_ended ON webhook_deliveries (updated_at) WHERE state <> 'pending';

-- Each call a delivery made: the response's status (none when there was no response), how
-- long it took, and what went wrong.
CREATE TABLE webhook_attempts (
    delivery_id  BIGINT NOT NULL,
    n            BIGINT NOT NULL,
    at           BIGINT NOT NULL,
    status       BIGINT,
    latency_ms   BIGINT NOT NULL,
    error        TEXT,
    PRIMARY KEY (delivery_id, n)
);

-- The outbox is written by triggers, so that every path that changes a state (submission,
-- claim, end, cancel, retry, rescue, sweep, a workflow step) writes its event in its own
-- transaction, and only while a webhook that wants it or another sink exists. They run once
-- per statement over its transition tables (a batched claim or ending is one call): they
-- first read which types are wanted (the enabled webhooks' types of the kind, every type
-- when NATS takes events) and return at once when none is, then keep only the rows whose
-- new state is wanted and changed.
CREATE FUNCTION wasmjobs_wanted(kind text, OUT types text[], OUT every boolean, OUT nats boolean)
LANGUAGE sql STABLE AS $$
    SELECT array_agg(DISTINCT t) FILTER (WHERE t IS NOT NULL),
           COALESCE(bool_or(t = kind || '.*'), FALSE)
               OR EXISTS (SELECT 1 FROM event_sinks WHERE name = 'nats'),
           EXISTS (SELECT 1 FROM event_sinks WHERE name = 'nats')
    FROM webhooks w
    CROSS JOIN LATERAL unnest(string_to_array(w.events, ',')) AS t
    WHERE w.enabled AND t LIKE kind || '.%'
$$;

CREATE FUNCTION wasmjobs_outbox_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    want record;
BEGIN
    want := wasmjobs_wanted('job');
    IF want.types IS NULL AND NOT want.every THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO outbox (kind, entity_id, state, module_digest, queue, workflow, run_id,
                            attempts, outcome, error, created_at, at, to_webhooks, to_nats)
        SELECT 'job', n.id, n.state, n.module_digest, n.queue, r.workflow, r.id, n.attempts,
               n.outcome, n.error, n.created_at, n.updated_at,
               COALESCE('job.*' = ANY(want.types) OR 'job.' || n.state = ANY(want.types), FALSE),
               want.nats
        FROM new_rows n
        LEFT JOIN workflow_runs r
            ON r.id = CASE WHEN n.workflow_ref ~ '^[0-9]{1,18}$' THEN n.workflow_ref::bigint END
        WHERE want.every OR 'job.' || n.state = ANY(want.types)
        ORDER BY n.id;
    ELSE
        INSERT INTO outbox (kind, entity_id, state, module_digest, queue, workflow, run_id,
                            attempts, outcome, error, created_at, at, to_webhooks, to_nats)
        SELECT 'job', n.id, n.state, n.module_digest, n.queue, r.workflow, r.id, n.attempts,
               n.outcome, n.error, n.created_at, n.updated_at,
               COALESCE('job.*' = ANY(want.types) OR 'job.' || n.state = ANY(want.types), FALSE),
               want.nats
        FROM new_rows n
        JOIN old_rows o ON o.id = n.id AND o.state IS DISTINCT FROM n.state
        LEFT JOIN workflow_runs r
            ON r.id = CASE WHEN n.workflow_ref ~ '^[0-9]{1,18}$' THEN n.workflow_ref::bigint END
        WHERE want.every OR 'job.' || n.state = ANY(want.types)
        ORDER BY n.id;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION wasmjobs_outbox_runs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    want record;
BEGIN
    want := wasmjobs_wanted('run');
    IF want.types IS NULL AND NOT want.every THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO outbox (kind, entity_id, state, workflow, run_id, error, created_at, at,
                            to_webhooks, to_nats)
        SELECT 'run', n.id, n.state, n.workflow, n.id, n.error, n.created_at, n.updated_at,
               COALESCE('run.*' = ANY(want.types) OR 'run.' || n.state = ANY(want.types), FALSE),
               want.nats
        FROM new_rows n
        WHERE want.every OR 'run.' || n.state = ANY(want.types)
        ORDER BY n.id;
    ELSE
        INSERT INTO outbox (kind, entity_id, state, workflow, run_id, error, created_at, at,
                            to_webhooks, to_nats)
        SELECT 'run', n.id, n.state, n.workflow, n.id, n.error, n.created_at, n.updated_at,
               COALESCE('run.*' = ANY(want.types) OR 'run.' || n.state = ANY(want.types), FALSE),
               want.nats
        FROM new_rows n
        JOIN old_rows o ON o.id = n.id AND o.state IS DISTINCT FROM n.state
        WHERE want.every OR 'run.' || n.state = ANY(want.types)
        ORDER BY n.id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_outbox_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION wasmjobs_outbox_jobs();
CREATE TRIGGER jobs_outbox_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION wasmjobs_outbox_jobs();
CREATE TRIGGER workflow_runs_outbox_insert AFTER INSERT ON workflow_runs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION wasmjobs_outbox_runs();
CREATE TRIGGER workflow_runs_outbox_update AFTER UPDATE ON workflow_runs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION wasmjobs_outbox_runs();
