SELECT id, url, events, module, workflow, queue, description, include_output, secret, enabled, disabled_reason, failing_since, created_at, updated_at
FROM webhooks WHERE id = $1
