-- Stores a module's bytes once per digest.
INSERT INTO modules (digest, size, world, imports, bytes, created_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (digest) DO NOTHING
