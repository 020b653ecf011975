-- A schedule may start a workflow run each tick (its target `{"workflow": {name, version,
-- input}}`) as well as submit a job: `last_run` is the run of its last tick, which its overlap
-- policy looks at as it does at `last_job` for a job.
ALTER TABLE schedules ADD COLUMN last_run BIGINT;
