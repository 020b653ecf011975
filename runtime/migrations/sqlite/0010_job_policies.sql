-- Version 10 lets a Postgres job refer to limits, retry policy and grants kept once in
-- `job_policies` instead of carrying their texts in every version of its row (see
-- migrations/postgres/0010, decision 009). SQLite's writes are far from its limits
-- (docs/performance.md) and its jobs keep their own texts; it has the same table and column
-- (always empty here) so that both stores read a job with the same SQL.
CREATE TABLE job_policies (
    key      BLOB PRIMARY KEY,
    limits   TEXT NOT NULL,
    retry    TEXT NOT NULL,
    grants   TEXT NOT NULL,
    used_at  INTEGER NOT NULL
);
ALTER TABLE jobs ADD COLUMN policy BLOB;
