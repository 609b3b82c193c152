-- reliable-kafka: idempotent consumer (inbox) deduplication table.
CREATE TABLE IF NOT EXISTS rk_processed_messages (
    consumer_group text        NOT NULL,
    message_id     uuid        NOT NULL,
    processed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, message_id)
);

CREATE INDEX IF NOT EXISTS rk_processed_messages_processed_at_idx ON rk_processed_messages (processed_at);
