-- Key ?1 has ?2 admitted and ?3 waiting jobs.
INSERT INTO concurrency_keys (key, active, waiting) VALUES (?1, ?2, ?3)
ON CONFLICT (key) DO UPDATE SET active = excluded.active, waiting = excluded.waiting
