-- Renews the leases of the jobs of ?2 (a JSON array of ids) that worker ?3 runs.
UPDATE jobs SET lease_until = ?1
WHERE id IN (SELECT value FROM json_each(?2)) AND state = 'running' AND worker = ?3
RETURNING id, cancel_requested
