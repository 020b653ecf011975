-- Version 5 lightens Postgres's writes per job (see migrations/postgres/0005): it drops the
-- foreign keys of events and attempts and makes the idempotency key's index partial. SQLite
-- checks a foreign key with an index lookup in the same process, cheap beside the rest of a
-- write, and cannot drop a constraint without rebuilding its table, so here the version
-- changes nothing.
SELECT 1;
