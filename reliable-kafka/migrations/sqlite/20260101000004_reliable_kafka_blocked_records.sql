-- reliable-kafka: key-blocking retry. A record whose handler failed waits here for its
-- next attempt, and the later records of its key on its partition wait behind it, while
-- records of other keys flow. One row per record (its coordinates), so deferring twice
-- after a crash changes nothing. The head of a key is its lowest offset.
CREATE TABLE IF NOT EXISTS rk_blocked_records (
    consumer_group  TEXT    NOT NULL,
    topic           TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT  NOT NULL,
    record_key      BLOB    NOT NULL,
    payload         BLOB,
    headers         TEXT    NOT NULL,
    timestamp_ms    BIGINT,
    attempt         INTEGER NOT NULL,
    due_at_ms       BIGINT  NOT NULL,
    last_error      TEXT,
    blocked_at_ms   BIGINT  NOT NULL,
    PRIMARY KEY (consumer_group, topic, kafka_partition, kafka_offset)
);

CREATE INDEX IF NOT EXISTS rk_blocked_records_key_idx ON rk_blocked_records
    (consumer_group, topic, kafka_partition, record_key, kafka_offset);
