SELECT minute, SUM(succeeded)::BIGINT, SUM(failed)::BIGINT, SUM(cancelled)::BIGINT FROM node_minutes
WHERE minute >= $1 GROUP BY minute ORDER BY minute
