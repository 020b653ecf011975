SELECT j.output FROM workflow_items i LEFT JOIN jobs j ON j.id = i.job_id
WHERE i.run_id = ?1 AND i.node = ?2
ORDER BY i.idx
