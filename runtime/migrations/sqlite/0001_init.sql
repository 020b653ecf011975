-- wasmjobs store, SQLite. Times are milliseconds since the Unix epoch. Same version numbers as
-- migrations/postgres.

CREATE TABLE modules (
    digest      TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    world       TEXT NOT NULL,
    imports     TEXT NOT NULL,          -- JSON array of import names
    bytes       BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE module_names (
    name        TEXT PRIMARY KEY,
    digest      TEXT NOT NULL REFERENCES modules (digest),
    updated_at  INTEGER NOT NULL
);

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    module_digest    TEXT NOT NULL REFERENCES modules (digest),
    state            TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    run_at           INTEGER NOT NULL,
    input            BLOB NOT NULL,
    limits           TEXT NOT NULL,     -- JSON
    retry            TEXT NOT NULL,     -- JSON
    grants           TEXT NOT NULL,     -- JSON
    idempotency_key  TEXT UNIQUE,
    attempts         INTEGER NOT NULL DEFAULT 0,
    deadline_at      INTEGER,
    worker           TEXT,
    lease_until      INTEGER,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    outcome          TEXT,
    output           BLOB,
    error            TEXT,
    event_seq        INTEGER NOT NULL DEFAULT 0,
    workflow_ref     TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    finished_at      INTEGER
);

CREATE INDEX jobs_queued ON jobs (priority DESC, run_at, id) WHERE state = 'queued';
CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE state = 'scheduled';
CREATE INDEX jobs_running ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_state_id ON jobs (state, id);
CREATE INDEX jobs_module_id ON jobs (module_digest, id);
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE attempts (
    job_id            INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt           INTEGER NOT NULL,
    worker            TEXT NOT NULL,
    outcome           TEXT,
    trap              TEXT,
    error             TEXT,
    fuel_consumed     INTEGER,
    peak_memory_bytes INTEGER,
    wall_time_us      INTEGER,
    started_at        INTEGER NOT NULL,
    finished_at       INTEGER,
    PRIMARY KEY (job_id, attempt)
);

-- The ordered history of each job: seq is per job, allocated under the job row's lock.
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
