-- Version 8 makes Postgres write an attempt's row once, at its end (see
-- migrations/postgres/0008). SQLite's writes are far from its limits (docs/performance.md) and
-- it keeps inserting the row at the claim, so here the version changes nothing.
SELECT 1;
