-- Key ?1's admitted and waiting jobs.
SELECT active, waiting FROM concurrency_keys WHERE key = ?1
