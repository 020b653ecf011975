-- wasmjobs store, SQLite: the whole schema. Times are milliseconds since the Unix epoch.
-- The same tables and columns as the Postgres store (runtime/migrations/postgres), but for
-- Postgres's `job_queue` and `claims`: here queued, scheduled and running jobs are found
-- through partial indexes of `jobs`.

CREATE TABLE modules (
    digest      TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    world       TEXT NOT NULL,
    imports     TEXT NOT NULL,          -- JSON array of import names
    bytes       BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);

-- A name points at a module; `owner` is the token that pointed it there (only it or an admin
-- may move it; NULL: set without tokens, only an admin may).
CREATE TABLE module_names (
    name        TEXT PRIMARY KEY,
    digest      TEXT NOT NULL REFERENCES modules (digest),
    owner       TEXT,
    updated_at  INTEGER NOT NULL
);

-- A job's limits, retry policy and grants (their JSON texts), kept once for all the jobs that
-- share them, under the SHA-256 of the three. Retention deletes those no job refers to.
CREATE TABLE job_settings (
    key      BLOB PRIMARY KEY,
    limits   TEXT NOT NULL,
    retry    TEXT NOT NULL,
    grants   TEXT NOT NULL,
    used_at  INTEGER NOT NULL
);

-- A job. `history` holds its state events and `ended_attempts` its ended attempts, one JSON
-- array per line (runtime/src/store/history.rs); its other events are rows of `events`.
CREATE TABLE jobs (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    module_digest      TEXT NOT NULL REFERENCES modules (digest),
    state              TEXT NOT NULL,
    priority           INTEGER NOT NULL,
    run_at             INTEGER NOT NULL,
    input              BLOB NOT NULL,
    settings           BLOB NOT NULL,
    idempotency_key    TEXT UNIQUE,
    attempts           INTEGER NOT NULL DEFAULT 0,
    lost_attempts      INTEGER NOT NULL DEFAULT 0,
    deadline_at        INTEGER,
    worker             TEXT,
    lease_until        INTEGER,
    attempt_started_at INTEGER,
    cancel_requested   BOOLEAN NOT NULL DEFAULT FALSE,
    outcome            TEXT,
    output             BLOB,
    error              TEXT,
    event_seq          INTEGER NOT NULL DEFAULT 0,
    history            TEXT NOT NULL DEFAULT '',
    ended_attempts     TEXT NOT NULL DEFAULT '',
    workflow_ref       TEXT,
    input_from         INTEGER,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    finished_at        INTEGER
);

CREATE INDEX jobs_queued ON jobs (priority DESC, run_at, id) WHERE state = 'queued';
CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE state = 'scheduled';
CREATE INDEX jobs_running ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_deadline ON jobs (deadline_at)
    WHERE deadline_at IS NOT NULL AND state IN ('queued', 'scheduled');
CREATE INDEX jobs_state_id ON jobs (state, id);
CREATE INDEX jobs_module_id ON jobs (module_digest, id);
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_input_from ON jobs (input_from) WHERE input_from IS NOT NULL;

-- A job's events other than its state changes: logs, progress, cancel requests.
CREATE TABLE events (
    job_id  INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    data    TEXT NOT NULL,                -- JSON
    at      INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE schedules (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT UNIQUE,
    cron         TEXT NOT NULL,
    target       TEXT NOT NULL,           -- JSON: what to submit on each tick
    next_run_at  INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);

-- Nodes and when each last showed it could write (readiness and start-up checks).
CREATE TABLE nodes (
    id       TEXT PRIMARY KEY,
    seen_at  INTEGER NOT NULL
);

CREATE TABLE workflows (
    name        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    definition  TEXT NOT NULL,  -- JSON
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE workflow_runs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow         TEXT NOT NULL,
    version          BIGINT NOT NULL,
    -- running, cancelling, succeeded, failed, cancelled
    state            TEXT NOT NULL,
    input            BLOB NOT NULL,
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
    output       BLOB,
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
    input    BLOB,
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
