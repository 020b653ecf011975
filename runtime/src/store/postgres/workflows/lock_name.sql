-- One writer per workflow name at a time (versions are the latest + 1).
SELECT pg_advisory_xact_lock(hashtext('wasmjobs.workflow.' || $1))
