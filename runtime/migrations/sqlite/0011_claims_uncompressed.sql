-- Version 11 stops Postgres compressing the job ids of its `claims` rows (see
-- migrations/postgres/0011). SQLite has no `claims` table and compresses nothing, so here the
-- version changes nothing.
SELECT 1;
