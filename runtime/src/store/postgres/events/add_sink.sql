-- A sink's publisher is alive at $2.
INSERT INTO event_sinks (name, seen_at) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at
