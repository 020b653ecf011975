-- Version 6 moves Postgres's queue and running set out of the jobs table (see
-- migrations/postgres/0006) so that Postgres can update a job's row in place. SQLite rewrites
-- the changed row and its index entries on each update whatever the indexes are, and its
-- writes are far from its limits (docs/performance.md), so here the version changes nothing.
SELECT 1;
