-- Version ?2 of workflow ?1, or its latest when ?2 is NULL.
SELECT name, version, definition, created_at FROM workflows
WHERE name = ?1 AND (?2 IS NULL OR version = ?2)
ORDER BY version DESC LIMIT 1
