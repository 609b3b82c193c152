-- reliable-kafka: rows that used up the relay's send attempts are parked (parked_at set)
-- and leave the pending index, so they no longer slow down every claim.
ALTER TABLE rk_outbox ADD COLUMN IF NOT EXISTS parked_at timestamptz;
DROP INDEX IF EXISTS rk_outbox_pending_idx;
CREATE INDEX IF NOT EXISTS rk_outbox_pending_idx ON rk_outbox (seq) WHERE delivered_at IS NULL AND parked_at IS NULL;
