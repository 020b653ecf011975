INSERT INTO node_minutes (node, minute, succeeded, failed, cancelled) VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (node, minute) DO UPDATE SET succeeded = node_minutes.succeeded + excluded.succeeded,
    failed = node_minutes.failed + excluded.failed, cancelled = node_minutes.cancelled + excluded.cancelled
