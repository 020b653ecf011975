-- Job(s) of keys $1 (limits $2) come to their keys: whether each waits (`wasmjobs_admit`).
SELECT wasmjobs_admit($1, $2)
