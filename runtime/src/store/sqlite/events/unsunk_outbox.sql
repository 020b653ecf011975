-- With no NATS sink left, nothing will publish the events waiting for one; those no
-- webhook waits for either go.
UPDATE outbox SET to_nats = FALSE
WHERE to_nats AND NOT EXISTS (SELECT 1 FROM event_sinks WHERE name = 'nats')
