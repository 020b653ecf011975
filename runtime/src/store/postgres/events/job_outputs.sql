SELECT id, output FROM jobs WHERE id = ANY($1) AND output IS NOT NULL
