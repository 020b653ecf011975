SELECT id, slots, busy, seen_at FROM nodes WHERE seen_at >= $1 ORDER BY id
