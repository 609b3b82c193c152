-- reliable-kafka: a small index of the rows the relay parked, so the relay's metrics
-- (rk_outbox_parked, read every 5 s) count them without scanning the table.
CREATE INDEX IF NOT EXISTS rk_outbox_parked_idx ON rk_outbox (parked_at) WHERE parked_at IS NOT NULL;
