-- reliable-kafka on SQLite: the same tables as on PostgreSQL (migrations/postgres),
-- with UUIDs as hyphenated lowercase text and timestamps as RFC 3339 text in UTC
-- with milliseconds ('2026-11-23T06:43:12.123Z'), which compare correctly as text.

-- Transactional outbox. Columns follow Debezium's outbox event router.
CREATE TABLE IF NOT EXISTS rk_outbox (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT    NOT NULL UNIQUE,
    aggregatetype  TEXT    NOT NULL,
    aggregateid    TEXT,
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        BLOB    NOT NULL,
    content_type   TEXT    NOT NULL,
    headers        TEXT    NOT NULL DEFAULT '{}',
    created_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    delivered_at   TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    parked_at      TEXT
);
CREATE INDEX IF NOT EXISTS rk_outbox_pending_idx ON rk_outbox (seq) WHERE delivered_at IS NULL AND parked_at IS NULL;
CREATE INDEX IF NOT EXISTS rk_outbox_delivered_idx ON rk_outbox (delivered_at) WHERE delivered_at IS NOT NULL;

-- Idempotent consumer deduplication table.
CREATE TABLE IF NOT EXISTS rk_processed_messages (
    consumer_group TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    processed_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (consumer_group, message_id)
);
CREATE INDEX IF NOT EXISTS rk_processed_messages_processed_at_idx ON rk_processed_messages (processed_at);

-- Dead-lettered records the re-driver gave up on.
CREATE TABLE IF NOT EXISTS rk_parked_messages (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    dead_letter_topic     TEXT    NOT NULL,
    dead_letter_partition INTEGER NOT NULL,
    dead_letter_offset    INTEGER NOT NULL,
    message_id            TEXT,
    original_topic        TEXT,
    original_partition    INTEGER,
    original_offset       INTEGER,
    consumer_group        TEXT,
    reason                TEXT    NOT NULL,
    error_message         TEXT,
    attempts              INTEGER,
    redrive_count         INTEGER NOT NULL,
    record_key            BLOB,
    payload               BLOB,
    headers               TEXT    NOT NULL DEFAULT '[]',
    dead_lettered_at      TEXT,
    parked_at             TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE UNIQUE INDEX IF NOT EXISTS rk_parked_messages_record_idx ON rk_parked_messages
    (dead_letter_topic, dead_letter_partition, dead_letter_offset, coalesce(dead_lettered_at, ''));
CREATE INDEX IF NOT EXISTS rk_parked_messages_original_topic_idx ON rk_parked_messages (original_topic, parked_at);
