-- What is left in the token buckets of queues $1 ($2) at $3, after a claim took from them.
UPDATE queues SET tokens = u.tokens, tokens_at = $3
FROM UNNEST($1::text[], $2::float8[]) AS u(name, tokens)
WHERE queues.name = u.name
