-- A schedule's time zone (an IANA name such as `Europe/Berlin`): its cron expression is read
-- in that zone's local time, daylight saving included. NULL: UTC.
ALTER TABLE schedules ADD COLUMN tz TEXT;
