-- The token that pointed a module name at its digest: only that token, or an admin token, may
-- move the name. NULL: set without tokens (only an admin token may move it).
ALTER TABLE module_names ADD COLUMN owner TEXT;
