-- Workflow definitions, versioned by name: each change of a definition is a new version, and a
-- run pins the version it started with.
CREATE TABLE workflows (
    name        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    definition  TEXT NOT NULL,  -- JSON
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);
