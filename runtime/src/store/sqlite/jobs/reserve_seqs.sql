-- Reserves ?1 event seqs of job ?2; returns the last.
UPDATE jobs SET event_seq = event_seq + ?1 WHERE id = ?2 RETURNING event_seq
