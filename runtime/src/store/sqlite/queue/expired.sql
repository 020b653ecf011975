SELECT id, attempts, worker FROM jobs WHERE state = 'running' AND lease_until < ?1
