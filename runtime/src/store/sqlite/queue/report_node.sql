INSERT INTO nodes (id, seen_at, slots, busy) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at, slots = excluded.slots, busy = excluded.busy
