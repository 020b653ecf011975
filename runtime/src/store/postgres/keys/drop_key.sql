-- Key $1 has nothing admitted or waiting: its row goes.
DELETE FROM concurrency_keys WHERE key = $1 AND active = 0 AND waiting = 0
