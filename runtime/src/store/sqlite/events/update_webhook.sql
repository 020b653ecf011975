-- Writes a webhook's every changeable field.
UPDATE webhooks
SET url = ?2, events = ?3, description = ?4, include_output = ?5, enabled = ?6,
    disabled_reason = ?7, failing_since = ?8, updated_at = ?9
WHERE id = ?1
