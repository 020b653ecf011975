-- A module by digest or by name, with every name that points at it.
SELECT m.digest, m.size, m.world, m.imports, m.created_at,
       (SELECT group_concat(n.name, char(10)) FROM module_names n WHERE n.digest = m.digest) AS names
FROM modules m
WHERE m.digest = ?1 OR m.digest = (SELECT digest FROM module_names WHERE name = ?1)
