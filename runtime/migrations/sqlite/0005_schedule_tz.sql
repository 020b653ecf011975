-- A schedule's time zone (an IANA name such as `Europe/Berlin`): its cron expression is read
-- in that zone's local time, daylight saving included. NULL: UTC.
ALTER TABLE schedules ADD COLUMN tz TEXT;

-- What a tick does while the schedule's previous job has not ended: `allow` (submit anyway),
-- `skip` (submit nothing), `queue_one` (keep the latest such tick in `pending_tick` and submit
-- it once the previous job ended). `last_job` is the job of the schedule's last submission.
ALTER TABLE schedules ADD COLUMN overlap TEXT NOT NULL DEFAULT 'allow';
ALTER TABLE schedules ADD COLUMN last_job BIGINT;
ALTER TABLE schedules ADD COLUMN pending_tick BIGINT;
