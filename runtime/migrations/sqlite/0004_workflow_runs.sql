-- Workflow runs: the workflow service's own tables. A job of a run knows only an opaque
-- workflow_ref (the run id); the service follows its nodes' jobs from here.
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

-- One row per node of a run. A plain node has one job; a for_each node has items.
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

-- The elements of a for_each node: the input waits here until the element's job is submitted.
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

-- A run's ordered history: node and run state changes. seq is per run, with no gaps.
CREATE TABLE workflow_events (
    run_id  BIGINT NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
    seq     BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    data    TEXT NOT NULL,  -- JSON
    at      BIGINT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- A job whose input is another job's output (a workflow node with one upstream): the output
-- stays where it is and is read once, when the job's attempt starts, instead of being copied.
ALTER TABLE jobs ADD COLUMN input_from BIGINT;
CREATE INDEX jobs_input_from ON jobs (input_from) WHERE input_from IS NOT NULL;
