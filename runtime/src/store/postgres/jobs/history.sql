SELECT history FROM jobs WHERE id = $1
