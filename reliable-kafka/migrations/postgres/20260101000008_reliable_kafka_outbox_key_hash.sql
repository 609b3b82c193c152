-- reliable-kafka 0.2: Kafka's murmur2 hash of the key (sign bit cleared), written by
-- Outbox::enqueue. A sharded relay assigns a row to shard key_hash % shards (rows
-- without a key, and rows written before this column existed: seq % shards), so that
-- with a shard count dividing the topic's partition count each partition has one
-- publisher. Tables of your own need the column too.
ALTER TABLE rk_outbox ADD COLUMN IF NOT EXISTS key_hash integer;
