-- Key ?1 has no admitted or waiting job left.
DELETE FROM concurrency_keys WHERE key = ?1
