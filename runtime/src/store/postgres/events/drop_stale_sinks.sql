-- The sinks no publisher renewed since $1.
DELETE FROM event_sinks WHERE seen_at < $1
