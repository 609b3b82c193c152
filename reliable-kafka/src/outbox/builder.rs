//! The relay's builder: settings, their checks, the producer.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Pool;

use super::record::HeaderFormat;
use super::relay::{OutboxRelay, RelayConfig};
use super::sequence;
use super::stats::RelayStats;
use crate::error::validate_identifier;
use crate::kafka::HealthContext;
use crate::telemetry::record::RelayMetrics;
use crate::{Backend, ConfigError, DefaultBackend, Error, KafkaConfig};

/// Default of [`OutboxRelayBuilder::max_pending_age`].
pub const DEFAULT_MAX_PENDING_AGE: Duration = Duration::from_secs(60);

/// Builder of [`OutboxRelay`].
#[derive(Debug, Clone)]
pub struct OutboxRelayBuilder<DB: Backend = DefaultBackend> {
    pool: Pool<DB>,
    kafka: KafkaConfig,
    table: String,
    batch_size: usize,
    poll_interval: Duration,
    retention: Duration,
    cleanup_interval: Duration,
    max_send_attempts: u32,
    header_format: HeaderFormat,
    max_pending_age: Duration,
    shards: u32,
    rebalance_interval: Duration,
    sequence_numbers: bool,
}

/// Most shards of one outbox table.
pub const MAX_SHARDS: u32 = 1024;

impl<DB: Backend> OutboxRelayBuilder<DB> {
    /// Outbox table (default `rk_outbox`), optionally `schema.table`.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }
    /// Rows claimed and published per transaction (default 500, 1..=100 000).
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows;
        self
    }
    /// Fallback poll when no notification arrives (default 500 ms, > 0).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }
    /// How long delivered rows are kept before deletion (default 1 h). Zero deletes
    /// each row in the transaction that confirms its delivery.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }
    /// How often delivered rows past retention are deleted (default 60 s, > 0), in
    /// statements of at most 10 000 rows.
    pub fn cleanup_interval(mut self, interval: Duration) -> Self {
        self.cleanup_interval = interval;
        self
    }
    /// Attempts per row, for errors that reject the record itself (too large, invalid,
    /// invalid topic), before the relay parks it (default 10, ≥ 1). Outages, timeouts and
    /// other errors are retried without limit and never park a row. librdkafka retries
    /// inside each attempt for up to `message.timeout.ms`.
    pub fn max_send_attempts(mut self, attempts: u32) -> Self {
        self.max_send_attempts = attempts;
        self
    }
    /// Age of the oldest pending row above which [`RelayHandle::health`](crate::RelayHandle::health) reports the
    /// relay unhealthy (half of it: degraded); default [`DEFAULT_MAX_PENDING_AGE`], 60 s.
    /// Set it from the delay your consumers can bear.
    pub fn max_pending_age(mut self, age: Duration) -> Self {
        self.max_pending_age = age;
        self
    }
    /// Identity headers written on each record (default [`HeaderFormat::Envelope`], the
    /// `rk-*` envelope): [`HeaderFormat::CloudEvents`] for consumers that read
    /// CloudEvents (any CloudEvents SDK, `IdentitySource::cloud_events`), or both.
    pub fn header_format(mut self, format: HeaderFormat) -> Self {
        self.header_format = format;
        self
    }

    /// Splits the table's rows into `shards` shards (default 1, at most [`MAX_SHARDS`];
    /// PostgreSQL only), so that up to `shards` relay instances publish at once.
    ///
    /// A row's shard is `key_hash % shards`, where `key_hash` is Kafka's murmur2 hash of
    /// its key, the one the producer's partitioner (`murmur2_random`, Java's default)
    /// maps to a partition: with a shard count that divides the topics' partition
    /// counts (the partition count itself, or 4 of 32) every partition has exactly one
    /// publisher, and per-key order holds as with one relay. Rows without a key are
    /// spread by `seq`.
    ///
    /// Each instance takes a member slot and the shards whose number modulo the count of
    /// live members is its rank; every [`OutboxRelayBuilder::rebalance_interval`] it looks
    /// again and hands over or takes shards. A shard is handed over only with nothing of
    /// it in flight, and taken only once free, so no two instances publish one shard at
    /// once. An instance that dies loses its locks with its database session; its rows
    /// in flight are published again by the next owner (at-least-once).
    ///
    /// Instances of one table must agree: an unsharded relay and sharded ones exclude
    /// each other (the table lock, exclusive against shared), and an instance that
    /// finds another shard count in use waits and logs an error. Rows written without
    /// `key_hash` (by 0.1, or by other writers) are sharded by PostgreSQL's `hashtext`
    /// of their key: one shard per key still, but not the one of the key's newer rows,
    /// so turn sharding on once such rows are published.
    ///
    /// [`OutboxRelayBuilder::build`] rejects 0, more than [`MAX_SHARDS`], and more than
    /// 1 on SQLite (`Error::Config` naming `shards`).
    pub fn shards(mut self, shards: u32) -> Self {
        self.shards = shards;
        self
    }
    /// How often a sharded relay checks which instances are alive and rebalances the
    /// shards (default 1 s, > 0): also the longest a dead instance's shards wait.
    pub fn rebalance_interval(mut self, interval: Duration) -> Self {
        self.rebalance_interval = interval;
        self
    }

    /// Numbers each record for consumers that deduplicate by watermark
    /// ([`crate::ListenerContainerBuilder::watermark_dedup`]); default off, PostgreSQL
    /// only.
    ///
    /// Each row gets, at its first claim, the next number of its shard (column
    /// `relay_seq`, counters in `rk_relay_sequences`) and keeps it when it is sent
    /// again; the record carries it in [`crate::headers::RELAY_SEQ`] (one header more).
    /// The producer runs with `enable.gapless.guarantee=true` and
    /// `message.timeout.ms=0`: during a broker outage sends wait instead of failing (a
    /// running relay stops at shutdown all the same, its rows pending; `relay_once` and
    /// `drain` wait as long as the outage, and a sharded instance keeps its shards
    /// meanwhile), an error that would
    /// leave a gap stops the producer and the relay builds a new one, and a batch is
    /// handed to the producer once the one before it is acknowledged. Why that makes
    /// the watermark safe: the module `outbox::sequence` in the sources.
    ///
    /// [`OutboxRelayBuilder::build`] fails naming `sequence_numbers` on SQLite and
    /// MySQL, and naming the key when the Kafka settings contradict those above
    /// (`message.timeout.ms`, `delivery.timeout.ms`, `enable.gapless.guarantee`,
    /// `enable.idempotence`).
    pub fn sequence_numbers(mut self, on: bool) -> Self {
        self.sequence_numbers = on;
        self
    }

    /// Validates the settings and creates the producer.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key of an invalid setting (`outbox_table`,
    /// `batch_size`, `poll_interval`, `cleanup_interval`, `max_send_attempts`,
    /// `header_format`, `shards`, `rebalance_interval`, `sequence_numbers` and the Kafka
    /// keys it needs);
    /// [`Error::Kafka`] when librdkafka rejects the producer configuration.
    pub fn build(self) -> Result<OutboxRelay<DB>, Error> {
        validate_identifier("outbox_table", &self.table)?;
        if !(1..=100_000).contains(&self.batch_size) {
            return Err(ConfigError::invalid("batch_size", "must be within 1..=100000").into());
        }
        if self.poll_interval.is_zero() {
            return Err(ConfigError::invalid("poll_interval", "must be greater than zero").into());
        }
        if self.cleanup_interval.is_zero() {
            return Err(ConfigError::invalid("cleanup_interval", "must be greater than zero").into());
        }
        self.header_format.validate()?;
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return Err(ConfigError::invalid("shards", "must be within 1..=1024").into());
        }
        if self.shards > 1 && !DB::SHARDED_RELAY {
            return Err(ConfigError::invalid("shards", "several relays per table need PostgreSQL").into());
        }
        if self.rebalance_interval.is_zero() {
            return Err(ConfigError::invalid("rebalance_interval", "must be greater than zero").into());
        }
        if self.max_send_attempts == 0 || self.max_send_attempts > i32::MAX as u32 {
            return Err(ConfigError::invalid("max_send_attempts", "must be at least 1").into());
        }
        if self.sequence_numbers && !DB::SEQUENCED_RELAY {
            return Err(ConfigError::invalid("sequence_numbers", "sequence numbers need PostgreSQL").into());
        }
        let statistics = KafkaConfig::statistics_preset();
        let mut presets = KafkaConfig::PRODUCER_PRESETS.to_vec();
        presets.push(("statistics.interval.ms", &statistics));
        if self.sequence_numbers {
            presets.extend(sequence::SEQUENCED_PRESETS);
        }
        let config = self.kafka.client_config(&presets);
        if self.sequence_numbers {
            sequence::check_sequenced(&config)?;
        }
        let context = HealthContext::new(self.table.clone());
        let brokers = context.brokers.clone();
        let producer = sequence::ProducerSlot::new(config, context)?;
        let cfg = RelayConfig {
            batch_size: self.batch_size as i64,
            poll_interval: self.poll_interval,
            retention: self.retention,
            cleanup_interval: self.cleanup_interval,
            max_send_attempts: self.max_send_attempts as i32,
            header_format: self.header_format,
            sql: DB::relay_sql(&self.table, self.retention.is_zero(), self.shards, self.sequence_numbers),
            sequenced: self.sequence_numbers,
            shards: self.shards,
            rebalance_interval: self.rebalance_interval,
            backlog_sql: crate::store::sql::relay_gauges(&self.table),
            table: self.table,
        };
        let stats = Arc::new(RelayStats::new(brokers, self.max_pending_age));
        Ok(OutboxRelay { pool: self.pool, producer, cfg, stats, metrics: RelayMetrics::default() })
    }
}

impl<DB: Backend> OutboxRelay<DB> {
    /// Starts a builder. `kafka` settings override the producer presets
    /// (`acks=all`, `enable.idempotence=true`).
    pub fn builder(kafka: KafkaConfig, pool: Pool<DB>) -> OutboxRelayBuilder<DB> {
        OutboxRelayBuilder {
            pool,
            kafka,
            table: crate::schema::DEFAULT_OUTBOX_TABLE.to_owned(),
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            retention: Duration::from_secs(3600),
            cleanup_interval: Duration::from_secs(60),
            max_send_attempts: 10,
            header_format: HeaderFormat::Envelope,
            max_pending_age: DEFAULT_MAX_PENDING_AGE,
            shards: 1,
            rebalance_interval: Duration::from_secs(1),
            sequence_numbers: false,
        }
    }
}
