-- A job's module is checked once per insert statement, not by a foreign key row by row.
--
-- The key `jobs.module_digest REFERENCES modules` ran its constraint trigger once per inserted
-- job: a query of its own that locked the module's row (`SELECT 1 … FOR KEY SHARE`), 50,000
-- of them for 50,000 jobs, all on the same row. Without it the scheduler benchmark ran 5–15 %
-- faster one job per submit (docs/performance.md). The store's inserts now call
-- `wasmjobs_modules_exist` with the batch's digests, once per statement (an InitPlan): it
-- raises `foreign_key_violation` naming the first digest that is not stored, so the whole
-- statement fails and nothing of it is written, as the key did. Modules are never deleted (no
-- route, command or retention removes one), so a module found when its job is inserted stays.
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_module_digest_fkey;

CREATE OR REPLACE FUNCTION wasmjobs_modules_exist(digests TEXT[]) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
DECLARE
    missing TEXT;
BEGIN
    SELECT d INTO missing
    FROM (SELECT DISTINCT d FROM unnest(digests) AS d) AS wanted
    WHERE NOT EXISTS (SELECT 1 FROM modules m WHERE m.digest = wanted.d)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'a job names module %, which is not stored', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN TRUE;
END
$$;
