-- wasmjobs store, Postgres: the whole schema. Times are milliseconds since the Unix epoch.
-- The SQLite store has the same tables and columns (runtime/migrations/sqlite), but for
-- `job_queue` and `claims`, which are how Postgres finds queued and running jobs
-- (docs/decisions/006, 008).

CREATE TABLE modules (
    digest      TEXT PRIMARY KEY,
    size        BIGINT NOT NULL,
    world       TEXT NOT NULL,
    imports     TEXT NOT NULL,          -- JSON array of import names
    bytes       BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);

-- A name points at a module; `owner` is the token that pointed it there (only it or an admin
-- may move it; NULL: set without tokens, only an admin may).
CREATE TABLE module_names (
    name        TEXT PRIMARY KEY,
    digest      TEXT NOT NULL REFERENCES modules (digest),
    owner       TEXT,
    updated_at  BIGINT NOT NULL
);

-- A job's limits, retry policy and grants (their JSON texts), kept once for all the jobs that
-- share them, under the SHA-256 of the three (docs/decisions/009). `used_at` keeps one alive
-- while submissions rely on it; retention deletes those no job refers to.
CREATE TABLE job_settings (
    key      BYTEA PRIMARY KEY,
    limits   TEXT NOT NULL,
    retry    TEXT NOT NULL,
    grants   TEXT NOT NULL,
    used_at  BIGINT NOT NULL
);

-- A job. Its row is updated in place (HOT: no index reads a column a transition changes), so
-- it keeps room on its page. `history` holds its state events and `ended_attempts` its ended
-- attempts, one JSON array per line (runtime/src/store/history.rs); its other events are rows
-- of `events`. A job's module is checked by its insert statement (`wasmjobs_modules_exist`),
-- not row by row.
CREATE TABLE jobs (
    id                 BIGSERIAL PRIMARY KEY,
    module_digest      TEXT NOT NULL,
    state              TEXT NOT NULL,
    priority           BIGINT NOT NULL,
    run_at             BIGINT NOT NULL,
    input              BYTEA NOT NULL,
    settings           BYTEA NOT NULL,
    idempotency_key    TEXT,
    attempts           BIGINT NOT NULL DEFAULT 0,
    lost_attempts      BIGINT NOT NULL DEFAULT 0,
    deadline_at        BIGINT,
    worker             TEXT,
    lease_until        BIGINT,
    attempt_started_at BIGINT,
    cancel_requested   BOOLEAN NOT NULL DEFAULT FALSE,
    outcome            TEXT,
    output             BYTEA,
    error              TEXT,
    event_seq          BIGINT NOT NULL DEFAULT 0,
    history            TEXT NOT NULL DEFAULT '',
    ended_attempts     TEXT NOT NULL DEFAULT '',
    workflow_ref       TEXT,
    input_from         BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    finished_at        BIGINT
) WITH (fillfactor = 30);

CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_input_from ON jobs (input_from) WHERE input_from IS NOT NULL;
CREATE INDEX jobs_module_id ON jobs (module_digest, id);

-- Jobs waiting to run (`ready`: queued; else scheduled), one narrow row each, taken by `ctid`.
CREATE TABLE job_queue (
    job_id       BIGINT NOT NULL,
    priority     BIGINT NOT NULL,
    run_at       BIGINT NOT NULL,
    deadline_at  BIGINT,
    ready        BOOLEAN NOT NULL
) WITH (vacuum_truncate = false);

CREATE INDEX job_queue_claim ON job_queue (priority DESC, run_at, job_id) WHERE ready;
CREATE INDEX job_queue_waiting ON job_queue (run_at, job_id) WHERE NOT ready;
CREATE INDEX job_queue_deadline ON job_queue (deadline_at) WHERE deadline_at IS NOT NULL;

-- One row per claim statement: the worker and the jobs it took (how the running set is
-- found). The array stays in the row, uncompressed (a claim reads it whole).
CREATE TABLE claims (
    id       BIGSERIAL PRIMARY KEY,
    worker   TEXT NOT NULL,
    job_ids  BIGINT[] NOT NULL,
    at       BIGINT NOT NULL
) WITH (vacuum_truncate = false, toast_tuple_target = 8160);
ALTER TABLE claims ALTER COLUMN job_ids SET STORAGE MAIN;

-- A job's events other than its state changes: logs, progress, cancel requests.
CREATE TABLE events (
    job_id  BIGINT NOT NULL,
    seq     BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    data    TEXT NOT NULL,                -- JSON
    at      BIGINT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE schedules (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT UNIQUE,
    cron         TEXT NOT NULL,
    target       TEXT NOT NULL,           -- JSON: what to submit on each tick
    next_run_at  BIGINT NOT NULL,
    created_at   BIGINT NOT NULL
);

-- Nodes and when each last showed it could write (readiness and start-up checks).
CREATE TABLE nodes (
    id       TEXT PRIMARY KEY,
    seen_at  BIGINT NOT NULL
);

CREATE TABLE workflows (
    name        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    definition  TEXT NOT NULL,  -- JSON
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE workflow_runs (
    id               BIGSERIAL PRIMARY KEY,
    workflow         TEXT NOT NULL,
    version          BIGINT NOT NULL,
    -- running, cancelling, succeeded, failed, cancelled
    state            TEXT NOT NULL,
    input            BYTEA NOT NULL,
    error            TEXT,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    deadline_at      BIGINT,
    -- Bumped by every step of the engine: a step commits only if nobody stepped in between.
    rev              BIGINT NOT NULL DEFAULT 0,
    event_seq        BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    finished_at      BIGINT
);
CREATE INDEX workflow_runs_active ON workflow_runs (id) WHERE state IN ('running', 'cancelling');
CREATE INDEX workflow_runs_finished ON workflow_runs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE workflow_nodes (
    run_id       BIGINT NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
    node         TEXT NOT NULL,
    -- The module digest, pinned when the run was created.
    module       TEXT NOT NULL,
    -- pending, running, succeeded, failed, skipped, cancelled
    state        TEXT NOT NULL,
    job_id       BIGINT,
    items_total  BIGINT,
    items_next   BIGINT NOT NULL DEFAULT 0,
    items_done   BIGINT NOT NULL DEFAULT 0,
    items_failed BIGINT NOT NULL DEFAULT 0,
    -- A for_each node's gathered outputs (a JSON array); a plain node's output stays in its job.
    output       BYTEA,
    error        TEXT,
    started_at   BIGINT,
    finished_at  BIGINT,
    PRIMARY KEY (run_id, node)
);
CREATE INDEX workflow_nodes_running ON workflow_nodes (job_id) WHERE state = 'running';

CREATE TABLE workflow_items (
    run_id   BIGINT NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
    node     TEXT NOT NULL,
    idx      BIGINT NOT NULL,
    -- pending, running, succeeded, failed, cancelled
    state    TEXT NOT NULL,
    input    BYTEA,
    job_id   BIGINT,
    PRIMARY KEY (run_id, node, idx)
);
CREATE INDEX workflow_items_running ON workflow_items (job_id) WHERE state = 'running';

CREATE TABLE workflow_events (
    run_id  BIGINT NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
    seq     BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    data    TEXT NOT NULL,  -- JSON
    at      BIGINT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- Fails the statement that calls it (once, as an InitPlan) when a job names a module that is
-- not stored: one check per insert statement instead of a foreign key checked row by row.
-- Modules are never deleted, so a module found when its job is inserted stays.
CREATE FUNCTION wasmjobs_modules_exist(digests TEXT[]) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
DECLARE
    missing TEXT;
BEGIN
    SELECT d INTO missing
    FROM (SELECT DISTINCT d FROM unnest(digests) AS d) AS wanted
    WHERE NOT EXISTS (SELECT 1 FROM modules m WHERE m.digest = wanted.d)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'a job names module %, which is not stored', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN TRUE;
END
$$;
