-- What is left in queue ?1's token bucket (?2) at ?3, after a claim took from it. The bucket's
-- time never goes back, so no interval is refilled twice.
UPDATE queues SET tokens = ?2, tokens_at = MAX(tokens_at, ?3) WHERE name = ?1
