-- An attempt's row is written once, when the attempt ends, instead of inserted by the claim and
-- updated at the end: one row version per attempt instead of two. While the attempt runs, its
-- start is kept on the job (`attempt_started_at`, beside `worker` and `attempts`), and the store
-- shows the running attempt from there (`PgStore::attempts`). Attempts that were running when
-- this migration ran already have their row; their endings update it (`ON CONFLICT`).
-- (Adding a nullable column without a default rewrites nothing.)
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS attempt_started_at BIGINT;
