SELECT name, version, definition, created_at FROM workflows
WHERE name = ?1 ORDER BY version DESC LIMIT 1
