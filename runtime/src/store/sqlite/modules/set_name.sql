-- Points name ?1 at digest ?2 for owner ?3, unless it points there already; a name set by
-- another owner moves only when ?5 (the caller may move any name).
INSERT INTO module_names (name, digest, owner, updated_at) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (name) DO UPDATE
SET digest = excluded.digest, owner = excluded.owner, updated_at = excluded.updated_at
WHERE module_names.digest <> excluded.digest AND (?5 OR module_names.owner = excluded.owner)
