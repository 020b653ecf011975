SELECT run_id, seq, kind, data, at FROM workflow_events
WHERE run_id = ?1 AND seq > ?2
ORDER BY seq
LIMIT ?3
