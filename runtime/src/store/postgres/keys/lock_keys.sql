-- Locks keys $1 for the rest of the transaction (`wasmjobs_lock_keys`: advisory locks, in hash
-- order), before the statements that admit or end the jobs of several of them.
SELECT wasmjobs_lock_keys($1)
