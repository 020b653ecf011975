-- A webhook after a call: a success ends its failing period, a failure starts one if none
-- has started; ?4, when given, disables it for that reason.
UPDATE webhooks
SET failing_since = CASE WHEN ?2 THEN NULL ELSE COALESCE(failing_since, ?3) END,
    enabled = CASE WHEN ?4 IS NULL THEN enabled ELSE FALSE END,
    disabled_reason = COALESCE(?4, disabled_reason),
    updated_at = CASE WHEN ?4 IS NULL THEN updated_at ELSE ?3 END
WHERE id = ?1
