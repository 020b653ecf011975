-- Version 9 makes Postgres write a job's state changes and ended attempts into the job's own
-- row and keep one row per claim instead of one per running job (see
-- migrations/postgres/0009). SQLite's writes are far from its limits (docs/performance.md) and
-- it keeps its event and attempt rows, so here the version changes nothing.
SELECT 1;
