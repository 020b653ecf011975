SELECT m.digest, m.size, m.world, m.imports, m.created_at,
       (SELECT string_agg(n.name, chr(10)) FROM module_names n WHERE n.digest = m.digest) AS names
FROM modules m
ORDER BY m.created_at, m.digest
