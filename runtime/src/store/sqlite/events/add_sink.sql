INSERT INTO event_sinks (name, since) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING
