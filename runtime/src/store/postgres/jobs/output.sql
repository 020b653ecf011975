SELECT output FROM jobs WHERE id = $1
