-- Version 7 replaces Postgres's foreign key from jobs to modules with one check per insert
-- statement (see migrations/postgres/0007). SQLite checks the key with an index lookup in the
-- same process, cheap beside the rest of a write, and cannot drop a constraint without
-- rebuilding its table, so here the version changes nothing: the key stays.
SELECT 1;
