-- wasmjobs store, PostgreSQL. Times are milliseconds since the Unix epoch. Same version numbers as
-- migrations/sqlite.

CREATE TABLE modules (
    digest      TEXT PRIMARY KEY,
    size        BIGINT NOT NULL,
    world       TEXT NOT NULL,
    imports     TEXT NOT NULL,          -- JSON array of import names
    bytes       BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE module_names (
    name        TEXT PRIMARY KEY,
    digest      TEXT NOT NULL REFERENCES modules (digest),
    updated_at  BIGINT NOT NULL
);

CREATE TABLE jobs (
    id               BIGSERIAL PRIMARY KEY,
    module_digest    TEXT NOT NULL REFERENCES modules (digest),
    state            TEXT NOT NULL,
    priority         BIGINT NOT NULL,
    run_at           BIGINT NOT NULL,
    input            BYTEA NOT NULL,
    limits           TEXT NOT NULL,     -- JSON
    retry            TEXT NOT NULL,     -- JSON
    grants           TEXT NOT NULL,     -- JSON
    idempotency_key  TEXT UNIQUE,
    attempts         BIGINT NOT NULL DEFAULT 0,
    deadline_at      BIGINT,
    worker           TEXT,
    lease_until      BIGINT,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    outcome          TEXT,
    output           BYTEA,
    error            TEXT,
    event_seq        BIGINT NOT NULL DEFAULT 0,
    workflow_ref     TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    finished_at      BIGINT
);

CREATE INDEX jobs_queued ON jobs (priority DESC, run_at, id) WHERE state = 'queued';
CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE state = 'scheduled';
CREATE INDEX jobs_running ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_state_id ON jobs (state, id);
CREATE INDEX jobs_module_id ON jobs (module_digest, id);
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE attempts (
    job_id            BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt           BIGINT NOT NULL,
    worker            TEXT NOT NULL,
    outcome           TEXT,
    trap              TEXT,
    error             TEXT,
    fuel_consumed     BIGINT,
    peak_memory_bytes BIGINT,
    wall_time_us      BIGINT,
    started_at        BIGINT NOT NULL,
    finished_at       BIGINT,
    PRIMARY KEY (job_id, attempt)
);

-- The ordered history of each job: seq is per job, allocated under the job row's lock.
CREATE TABLE events (
    job_id  BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
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
