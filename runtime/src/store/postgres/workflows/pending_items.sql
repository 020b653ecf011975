SELECT idx, input FROM workflow_items
WHERE run_id = $1 AND node = $2 AND idx >= $3 AND state = 'pending'
ORDER BY idx
LIMIT $4
