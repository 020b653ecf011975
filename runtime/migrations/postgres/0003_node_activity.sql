-- What each process reports of itself every few seconds, for the dashboard's overview: its
-- slots and how many are busy, and the jobs it ended in each minute (by final state). Rows
-- older than a day are dropped by the reports themselves.
ALTER TABLE nodes ADD COLUMN slots BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN busy BIGINT NOT NULL DEFAULT 0;

CREATE TABLE node_minutes (
    node       TEXT NOT NULL,
    minute     BIGINT NOT NULL,
    succeeded  BIGINT NOT NULL DEFAULT 0,
    failed     BIGINT NOT NULL DEFAULT 0,
    cancelled  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (node, minute)
);
CREATE INDEX node_minutes_by_minute ON node_minutes (minute);
