-- A claim's list of job ids is stored as it is, not compressed.
--
-- A claim of a few hundred jobs writes a `claims` row whose `job_ids` array is past the ~2 KB at
-- which Postgres tries to compress a row: 512 ids are 4 KB, which pglz squeezed to ~1.7 KB at
-- ~0.3 ms of the server's CPU per claim (~0.6 µs per claimed job, 1–2 % of the server's time in
-- the scheduler benchmark; a claim row lives only until its jobs end). Rows up to a page now stay
-- as they are (`toast_tuple_target`); `MAIN` keeps the array in the row and compresses only a row
-- that would not fit a page otherwise (a node configured to claim thousands at once).
ALTER TABLE claims SET (toast_tuple_target = 8160);
ALTER TABLE claims ALTER COLUMN job_ids SET STORAGE MAIN;
