-- Admitted jobs of keys $1 ended: the waiting jobs that took their places, as queue rows
-- (`wasmjobs_release`).
SELECT ready, run_at, deadline_at FROM wasmjobs_release($1)
