SELECT id, attempts, worker FROM jobs WHERE state = 'running' AND worker = ?1
