-- Events out (docs/events.md): webhooks, the outbox their deliveries and the NATS publisher
-- read, and each delivery with its attempts.

-- A webhook: events whose type matches one of `events` (a list between commas, each a type
-- `job.succeeded` or a kind's wildcard `job.*`, `run.*`), and whose job or run matches the
-- filters given (`module`: a name or digest; `workflow`: a workflow's name; `queue`), are
-- delivered to `url`, signed with `secret`. `failing_since`: its deliveries have failed
-- since then, none succeeded; it is disabled (`enabled` false, `disabled_reason`) once that
-- lasts too long.
CREATE TABLE webhooks (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
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
    failing_since   INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

-- What else takes events besides webhooks: `nats` while a process publishes them to NATS
-- (`seen_at`: its publishers renew it every minute; a sink not seen for a day is dropped,
-- with what it had not published).
CREATE TABLE event_sinks (
    name     TEXT PRIMARY KEY,
    seen_at  INTEGER NOT NULL
);

-- Events written in the transaction of the change they tell of, while something takes them:
-- a job's or a run's new state (`kind` 'job' or 'run', `state`) with what the webhooks'
-- filters and the payload need. `to_webhooks`: not yet turned into deliveries; `to_nats`:
-- not yet published. A row both have taken is deleted. AUTOINCREMENT: an id is never used
-- twice, as receivers dedupe on it.
CREATE TABLE outbox (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    kind           TEXT NOT NULL,
    entity_id      INTEGER NOT NULL,
    state          TEXT NOT NULL,
    module_digest  TEXT,
    queue          TEXT,
    workflow       TEXT,
    run_id         INTEGER,
    attempts       INTEGER,
    outcome        TEXT,
    error          TEXT,
    created_at     INTEGER NOT NULL,
    at             INTEGER NOT NULL,
    to_webhooks    BOOLEAN NOT NULL,
    to_nats        BOOLEAN NOT NULL
);
CREATE INDEX outbox_webhooks ON outbox (id) WHERE to_webhooks;
CREATE INDEX outbox_nats ON outbox (id) WHERE to_nats;

-- One event for one webhook: `pending` (due at `next_at`; a sender that takes it moves
-- `next_at` past the call's end, as its lease), `delivered` or `dead`. Its body is fixed when
-- it is made. `since`: when its retry period started (its creation, or a redelivery by hand).
CREATE TABLE webhook_deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id      INTEGER NOT NULL,
    event_id        INTEGER NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_at         INTEGER NOT NULL,
    since           INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_of ON webhook_deliveries (webhook_id, id);
CREATE INDEX webhook_deliveries_ended ON webhook_deliveries (updated_at) WHERE state <> 'pending';

-- Each call a delivery made: the response's status (none when there was no response), how
-- long it took, and what went wrong.
CREATE TABLE webhook_attempts (
    delivery_id  INTEGER NOT NULL,
    n            INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    status       INTEGER,
    latency_ms   INTEGER NOT NULL,
    error        TEXT,
    PRIMARY KEY (delivery_id, n)
);

-- The outbox is written by triggers, so that every path that changes a state (submission,
-- claim, end, cancel, retry, rescue, sweep, a workflow step) writes its event in its own
-- transaction, and only while a webhook that wants it or another sink exists.
CREATE TRIGGER jobs_outbox_insert AFTER INSERT ON jobs
WHEN EXISTS (SELECT 1 FROM event_sinks)
  OR EXISTS (SELECT 1 FROM webhooks w WHERE w.enabled
             AND (instr(w.events, ',job.' || NEW.state || ',') OR instr(w.events, ',job.*,')))
BEGIN
    INSERT INTO outbox (kind, entity_id, state, module_digest, queue, workflow, run_id, attempts,
                        outcome, error, created_at, at, to_webhooks, to_nats)
    SELECT 'job', NEW.id, NEW.state, NEW.module_digest, NEW.queue, r.workflow, r.id,
           NEW.attempts, NEW.outcome, NEW.error, NEW.created_at, NEW.updated_at,
           EXISTS (SELECT 1 FROM webhooks w WHERE w.enabled
                   AND (instr(w.events, ',job.' || NEW.state || ',') OR instr(w.events, ',job.*,'))),
           EXISTS (SELECT 1 FROM event_sinks WHERE name = 'nats')
    FROM (SELECT 1) LEFT JOIN workflow_runs r ON r.id = CAST(NEW.workflow_ref AS INTEGER);
END;

CREATE TRIGGER jobs_outbox_update AFTER UPDATE OF state ON jobs
WHEN NEW.state IS NOT OLD.state AND (
     EXISTS (SELECT 1 FROM event_sinks)
  OR EXISTS (SELECT 1 FROM webhooks w WHERE w.enabled
             AND (instr(w.events, ',job.' || NEW.state || ',') OR instr(w.events, ',job.*,'))))
BEGIN
    INSERT INTO outbox (kind, entity_id, state, module_digest, queue, workflow, run_id, attempts,
                        outcome, error, created_at, at, to_webhooks, to_nats)
    SELECT 'job', NEW.id, NEW.state, NEW.module_digest, NEW.queue, r.workflow, r.id,
           NEW.attempts, NEW.outcome, NEW.error, NEW.created_at, NEW.updated_at,
           EXISTS (SELECT 1 FROM webhooks w WHERE w.enabled
                   AND (instr(w.events, ',job.' || NEW.state || ',') OR instr(w.events, ',job.*,'))),
           EXISTS (SELECT 1 FROM event_sinks WHERE name = 'nats')
    FROM (SELECT 1) LEFT JOIN workflow_runs r ON r.id = CAST(NEW.workflow_ref AS INTEGER);
END;

CREATE TRIGGER workflow_runs_outbox_insert AFTER INSERT ON workflow_runs
WHEN EXISTS (SELECT 1 FROM event_sinks)
  OR EXISTS (SELECT 1 FROM webhooks w WHERE w.enabled
             AND (instr(w.events, ',run.' || NEW.state || ',') OR instr(w.events, ',run.*,')))
BEGIN
    INSERT INTO outbox (kind, entity_id, state, workflow, run_id, error, created_at, at,
                        to_webhooks, to_nats)
    SELECT 'run', NEW.id, NEW.state, NEW.workflow, NEW.id, NEW.error, NEW.created_at,
           NEW.updated_at,
           EXISTS (SELECT 1 FROM webhooks w WHERE w.enabled
                   AND (instr(w.events, ',run.' || NEW.state || ',') OR instr(w.events, ',run.*,'))),
           EXISTS (SELECT 1 FROM event_sinks WHERE name = 'nats');
END;

CREATE TRIGGER workflow_runs_outbox_update AFTER UPDATE OF state ON workflow_runs
WHEN NEW.state IS NOT OLD.state AND (
     EXISTS (SELECT 1 FROM event_sinks)
  OR EXISTS (SELECT 1 FROM webhooks w WHERE w.enabled
             AND (instr(w.events, ',run.' || NEW.state || ',') OR instr(w.events, ',run.*,'))))
BEGIN
    INSERT INTO outbox (kind, entity_id, state, workflow, run_id, error, created_at, at,
                        to_webhooks, to_nats)
    SELECT 'run', NEW.id, NEW.state, NEW.workflow, NEW.id, NEW.error, NEW.created_at,
           NEW.updated_at,
           EXISTS (SELECT 1 FROM webhooks w WHERE w.enabled
                   AND (instr(w.events, ',run.' || NEW.state || ',') OR instr(w.events, ',run.*,'))),
           EXISTS (SELECT 1 FROM event_sinks WHERE name = 'nats');
END;
