-- reliable-kafka on MySQL 8.0.13+ and MariaDB 10.6+: the tables of the PostgreSQL
-- migrations in their final shape, in one step (the backend started at 0.2).
-- Timestamps are DATETIME(6) in UTC: the defaults use UTC_TIMESTAMP(6), whatever the
-- session's time zone. Message ids are hyphenated lowercase text, readable in a query.
-- Topics, groups and types are VARCHAR(255) (Kafka topic names have at most 249
-- characters) so that they can be keys.

-- Transactional outbox. `seq` is the clustered key: the relay claims in its order.
-- Columns id, aggregatetype, aggregateid, type and payload follow Debezium's outbox
-- event router.
CREATE TABLE IF NOT EXISTS rk_outbox (
    seq            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id             CHAR(36)     CHARACTER SET ascii NOT NULL,
    aggregatetype  VARCHAR(255) NOT NULL,
    aggregateid    TEXT,
    type           VARCHAR(255) NOT NULL,
    schema_version INT          NOT NULL,
    payload        LONGBLOB     NOT NULL,
    content_type   VARCHAR(255) NOT NULL,
    headers        LONGTEXT     NOT NULL DEFAULT ('{}'),
    created_at     DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    delivered_at   DATETIME(6),
    attempts       INT          NOT NULL DEFAULT 0,
    last_error     TEXT,
    parked_at      DATETIME(6),
    key_hash       INT,
    UNIQUE KEY rk_outbox_id_idx (id),
    -- The relay's claim (pending rows in `seq` order: both columns NULL) and its
    -- gauges; MySQL has no partial indexes.
    KEY rk_outbox_pending_idx (delivered_at, parked_at, seq),
    KEY rk_outbox_parked_idx (parked_at)
);

-- Idempotent consumer: one row per (group, message id) processed.
CREATE TABLE IF NOT EXISTS rk_processed_messages (
    consumer_group VARCHAR(255) NOT NULL,
    message_id     CHAR(36)     CHARACTER SET ascii NOT NULL,
    processed_at   DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    PRIMARY KEY (consumer_group, message_id),
    KEY rk_processed_messages_processed_at_idx (processed_at)
);

-- Dead-lettered records the re-driver gave up on ("parked"). One row per dead-letter
-- record: its coordinates and timestamp are unique, so parking twice after a crash
-- changes nothing.
CREATE TABLE IF NOT EXISTS rk_parked_messages (
    id                    BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    dead_letter_topic     VARCHAR(255) NOT NULL,
    dead_letter_partition INT          NOT NULL,
    dead_letter_offset    BIGINT       NOT NULL,
    message_id            TEXT,
    original_topic        VARCHAR(255),
    original_partition    INT,
    original_offset       BIGINT,
    consumer_group        TEXT,
    reason                TEXT         NOT NULL,
    error_message         TEXT,
    attempts              INT,
    redrive_count         INT          NOT NULL,
    record_key            LONGBLOB,
    payload               LONGBLOB,
    headers               LONGTEXT     NOT NULL DEFAULT ('[]'),
    dead_lettered_at      DATETIME(6),
    parked_at             DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    dead_lettered_key     DATETIME(6)  AS (COALESCE(dead_lettered_at, '1970-01-01 00:00:00')) STORED,
    UNIQUE KEY rk_parked_messages_record_idx (dead_letter_topic, dead_letter_partition, dead_letter_offset, dead_lettered_key),
    KEY rk_parked_messages_original_topic_idx (original_topic, parked_at)
);

-- What operators did to failed records, one row per operation.
CREATE TABLE IF NOT EXISTS rk_audit (
    id        BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    at        DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    operator  TEXT         NOT NULL,
    action    VARCHAR(64)  NOT NULL,
    target    TEXT         NOT NULL,
    records   BIGINT       NOT NULL,
    detail    TEXT         NOT NULL DEFAULT (''),
    KEY rk_audit_at_idx (at)
);

-- Key-blocking retry: records waiting behind a failing record of their key.
CREATE TABLE IF NOT EXISTS rk_blocked_records (
    consumer_group  VARCHAR(255) NOT NULL,
    topic           VARCHAR(255) NOT NULL,
    kafka_partition INT          NOT NULL,
    kafka_offset    BIGINT       NOT NULL,
    record_key      LONGBLOB     NOT NULL,
    payload         LONGBLOB,
    headers         LONGTEXT     NOT NULL,
    timestamp_ms    BIGINT,
    attempt         INT          NOT NULL,
    due_at_ms       BIGINT       NOT NULL,
    last_error      TEXT,
    blocked_at_ms   BIGINT       NOT NULL,
    PRIMARY KEY (consumer_group, topic, kafka_partition, kafka_offset),
    KEY rk_blocked_records_key_idx (consumer_group, topic, kafka_partition, record_key(255), kafka_offset)
);
