-- reliable-kafka 0.2: Kafka's murmur2 hash of the key (sign bit cleared), written by
-- Outbox::enqueue (the PostgreSQL relay's shards; SQLite runs one relay). Tables of
-- your own need the column too.
ALTER TABLE rk_outbox ADD COLUMN key_hash INTEGER;
