INSERT INTO workflow_nodes (run_id, node, module, state) VALUES (?1, ?2, ?3, 'pending')
