-- Whether every name of $1 still points at the digest of $2 beside it.
SELECT NOT EXISTS (SELECT 1 FROM UNNEST($1::text[], $2::text[]) AS p(name, digest)
                   WHERE NOT EXISTS (SELECT 1 FROM module_names m
                                     WHERE m.name = p.name AND m.digest = p.digest))
