-- The queues with a limit (`max_running` or `rate`), whose claims lock their rows.
SELECT name FROM queues WHERE max_running IS NOT NULL OR rate IS NOT NULL ORDER BY name
