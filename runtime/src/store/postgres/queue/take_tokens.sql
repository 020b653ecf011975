-- What is left in the token buckets of queues $1 ($2) at $3, after a claim took from them.
-- The bucket's time never goes back: a claimer that read its clock before waiting for the
-- row must not let the next claim refill the same interval twice.
UPDATE queues SET tokens = u.tokens, tokens_at = GREATEST(queues.tokens_at, $3)
FROM UNNEST($1::text[], $2::float8[]) AS u(name, tokens)
WHERE queues.name = u.name
