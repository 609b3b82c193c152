-- reliable-kafka 0.2: deduplication at the cost of a watermark.
--
-- A relay with sequence numbers on (OutboxRelayBuilder::sequence_numbers) gives each
-- row, when it first claims it, the next number of the row's shard (relay_seq), and
-- keeps it when the row is published again; the record carries it in `rk-relay-seq`
-- with the shard's source id. Tables of your own need the column too.
ALTER TABLE rk_outbox ADD COLUMN IF NOT EXISTS relay_seq bigint;
-- Pending rows that already have a number (in flight, or sent and failed) are claimed
-- again first, in number order.
CREATE INDEX IF NOT EXISTS rk_outbox_sequenced_idx ON rk_outbox (relay_seq)
    WHERE delivered_at IS NULL AND parked_at IS NULL AND relay_seq IS NOT NULL;

-- The last number given out per outbox table and shard, and the shard's source id
-- (random, so that two services' outbox tables of the same name never share one).
CREATE TABLE IF NOT EXISTS rk_relay_sequences (
    outbox_table text   NOT NULL,
    shard        integer NOT NULL,
    source       uuid   NOT NULL DEFAULT gen_random_uuid(),
    last_seq     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (outbox_table, shard)
);

-- A consumer in watermark mode (ListenerContainerBuilder::watermark_dedup) keeps here,
-- per group, partition and source, the highest sequence number it applied, in the
-- handler's transaction, instead of one deduplication row per record. A group that
-- had deduplication rows when its watermark was created writes them for numbered
-- records too until bootstrap_until (the rows' retention later), so that no record
-- processed in row mode before is applied again.
CREATE TABLE IF NOT EXISTS rk_watermarks (
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    source          text        NOT NULL,
    seq             bigint      NOT NULL,
    bootstrap_until timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, kafka_partition, source)
);
