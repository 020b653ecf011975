-- The latest version of every workflow.
SELECT name, version, definition, created_at FROM workflows w
WHERE version = (SELECT MAX(version) FROM workflows WHERE name = w.name)
ORDER BY name
