INSERT INTO workflows (name, version, definition, created_at) VALUES (?1, ?2, ?3, ?4)
