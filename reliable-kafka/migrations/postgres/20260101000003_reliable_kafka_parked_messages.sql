-- reliable-kafka: dead-lettered records the re-driver gave up on ("parked"), for
-- reporting and manual handling. One row per dead-letter record: its coordinates and
-- timestamp are unique, so parking twice after a crash changes nothing, while a topic
-- recreated with restarted offsets cannot collide with old rows.
CREATE TABLE IF NOT EXISTS rk_parked_messages (
    id                    bigserial   PRIMARY KEY,
    dead_letter_topic     text        NOT NULL,
    dead_letter_partition integer     NOT NULL,
    dead_letter_offset    bigint      NOT NULL,
    message_id            text,
    original_topic        text,
    original_partition    integer,
    original_offset       bigint,
    consumer_group        text,
    reason                text        NOT NULL,
    error_message         text,
    attempts              integer,
    redrive_count         integer     NOT NULL,
    record_key            bytea,
    payload               bytea,
    headers               jsonb       NOT NULL DEFAULT '[]'::jsonb,
    dead_lettered_at      timestamptz,
    parked_at             timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX IF NOT EXISTS rk_parked_messages_record_idx ON rk_parked_messages
    (dead_letter_topic, dead_letter_partition, dead_letter_offset, coalesce(dead_lettered_at, 'epoch'::timestamptz));

CREATE INDEX IF NOT EXISTS rk_parked_messages_original_topic_idx ON rk_parked_messages (original_topic, parked_at);
