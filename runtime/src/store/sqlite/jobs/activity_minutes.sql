SELECT minute, SUM(succeeded), SUM(failed), SUM(cancelled) FROM node_minutes
WHERE minute >= ?1 GROUP BY minute ORDER BY minute
