INSERT INTO workflow_events (run_id, seq, kind, data, at) VALUES (?1, ?2, ?3, ?4, ?5)
