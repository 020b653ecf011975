-- Creates a webhook, enabled.
INSERT INTO webhooks (url, events, module, workflow, queue, description, include_output, secret,
                      created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
RETURNING id, url, events, module, workflow, queue, description, include_output, secret, enabled, disabled_reason, failing_since, created_at, updated_at
