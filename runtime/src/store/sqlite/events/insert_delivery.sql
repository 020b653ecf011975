-- A new delivery, due now.
INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, payload, state, next_at, since,
                                created_at, updated_at)
VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5, ?5, ?5)
