SELECT output FROM jobs WHERE id = ?1 AND output IS NOT NULL
