INSERT INTO workflow_events (run_id, seq, kind, data, at) VALUES (?1, 1, 'run', ?2, ?3)
