//! The outbox relay: publishes committed outbox rows to Kafka.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Pool;
use tokio_util::sync::CancellationToken;

use super::record::{into_record, HeaderFormat};
use super::stats::RelayStats;
use crate::error::validate_identifier;
use crate::kafka::{send_in_order, HealthContext, OutRecord, Producer};
use crate::store::outbox::{OutboxListener, OutboxRow, Published, SendFailure};
use crate::store::sql::DELETE_BATCH;
use crate::telemetry::record::RelayMetrics;
use crate::worker::WorkerHandle;
use crate::{Backend, ConfigError, DefaultBackend, Error, KafkaConfig};

/// Publishes committed outbox rows to Kafka, in insertion order per key.
///
/// How it works, per batch, in one database transaction:
/// 1. take `pg_try_advisory_xact_lock` on a key derived from the table's OID, so that of several relay
///    instances exactly one publishes at a time (the others wait for the next wake-up):
///    no row is published twice by two instances and per-key order holds;
/// 2. read up to `batch_size` undelivered rows in `seq` order. Rows are selected by
///    their state, not by a high-water mark, so a row whose transaction commits late
///    (after rows with a higher `seq`) is never skipped;
/// 3. produce them all with the idempotent producer (`acks=all`), awaiting the whole
///    batch once;
/// 4. mark the delivered rows in one statement (or delete them when retention is zero),
///    count a failed attempt on the others, commit.
///
/// A crash between 3 and 4 republishes the batch: delivery is at-least-once, and the
/// idempotent consumer removes the duplicates.
///
/// Per-key order holds while sends succeed (librdkafka keeps order per partition with
/// the idempotent producer, and a batch is confirmed before the next is claimed). A row
/// whose send fails after librdkafka's own retries (`message.timeout.ms`) is retried in
/// a later batch, *after* later rows of its key that were sent in the same batch. Rows
/// the broker rejects as such (too large, invalid) `max_send_attempts` times are parked
/// (`parked_at` and `last_error` set) and no longer tried; outages never park a row
/// (see [`RelayStats::failed`]). Order is the insertion order
/// (`seq`) of rows visible at claim time; transactions that touch the same aggregate
/// should lock it (as an `UPDATE` does) so that insertion order is commit order.
///
/// The claim transaction stays open while the batch is acknowledged (up to
/// `message.timeout.ms`); keep PostgreSQL's `idle_in_transaction_session_timeout`
/// above it, or the batch is published again after the session is killed.
///
/// The relay wakes on `NOTIFY rk_outbox` (sent by the table's trigger at commit) and
/// polls every `poll_interval` in case a notification was missed.
///
/// On SQLite ([`crate::Sqlite`]) there is one writer at a time, so insertion order is
/// commit order: the relay reads pending rows without a transaction, publishes them and
/// marks them in a short `BEGIN IMMEDIATE` transaction, and it wakes every
/// `poll_interval` (no notifications). Run one relay per database file.
pub struct OutboxRelay<DB: Backend = DefaultBackend> {
    pool: Pool<DB>,
    producer: crate::kafka::Producer,
    cfg: RelayConfig<DB>,
    stats: Arc<RelayStats>,
    metrics: RelayMetrics,
}

impl<DB: Backend> std::fmt::Debug for OutboxRelay<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay").field("cfg", &self.cfg).field("stats", &self.stats).finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct RelayConfig<DB: Backend> {
    batch_size: i64,
    poll_interval: Duration,
    retention: Duration,
    cleanup_interval: Duration,
    max_send_attempts: i32,
    header_format: HeaderFormat,
    table: String,
    sql: DB::RelaySql,
    backlog_sql: String,
}

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
}

/// A running relay, see [`OutboxRelay::spawn`].
pub type RelayHandle = WorkerHandle<RelayStats>;

/// What one [`OutboxRelay::relay_once`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayBatch {
    /// Rows published and marked.
    pub published: usize,
    /// Rows whose send failed (they stay pending).
    pub failed: usize,
    /// Another relay instance held the lock; nothing was done.
    pub lock_busy: bool,
}

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
    /// Age of the oldest pending row above which [`RelayHandle::health`] reports the
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

    /// Validates the settings and creates the producer.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key of an invalid setting (`outbox_table`,
    /// `batch_size`, `poll_interval`, `cleanup_interval`, `max_send_attempts`,
    /// `header_format`);
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
        if self.max_send_attempts == 0 || self.max_send_attempts > i32::MAX as u32 {
            return Err(ConfigError::invalid("max_send_attempts", "must be at least 1").into());
        }
        let statistics = KafkaConfig::statistics_preset();
        let mut presets = KafkaConfig::PRODUCER_PRESETS.to_vec();
        presets.push(("statistics.interval.ms", &statistics));
        let context = HealthContext::new(self.table.clone());
        let brokers = context.brokers.clone();
        let producer: Producer = self
            .kafka
            .client_config(&presets)
            .create_with_context(context)
            .map_err(Error::kafka("create relay producer"))?;
        let cfg = RelayConfig {
            batch_size: self.batch_size as i64,
            poll_interval: self.poll_interval,
            retention: self.retention,
            cleanup_interval: self.cleanup_interval,
            max_send_attempts: self.max_send_attempts as i32,
            header_format: self.header_format,
            sql: DB::relay_sql(&self.table, self.retention.is_zero()),
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
        }
    }

    /// The relay's counters.
    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Publishes one batch (see the type's documentation).
    ///
    /// # Errors
    /// [`Error::Database`] when the claim or mark fails; the transaction is rolled back
    /// and the rows stay pending (they may have been sent: at-least-once).
    pub async fn relay_once(&self) -> Result<RelayBatch, Error> {
        self.relay_batch(false).await
    }

    pub(crate) async fn relay_batch(&self, stub_send: bool) -> Result<RelayBatch, Error> {
        use tracing::Instrument;
        let span = crate::telemetry::spans::relay_batch(&self.cfg.table);
        self.relay_batch_inner(stub_send, &span).instrument(span.clone()).await
    }

    async fn relay_batch_inner(&self, stub_send: bool, span: &tracing::Span) -> Result<RelayBatch, Error> {
        let producer = &self.producer;
        let format = &self.cfg.header_format;
        let publish = |rows: Vec<OutboxRow>| async move {
            self.stats.oldest_pending(rows.first().map(|r| r.created_at));
            if stub_send {
                return Published { delivered: rows.iter().map(|r| r.id).collect(), failed: Vec::new() };
            }
            let ids: Vec<_> = rows.iter().map(|r| r.id).collect();
            if crate::fault::sabotaged(crate::fault::SABOTAGE_MARK_BEFORE_SEND) {
                // Fire and forget: the rows count as sent before Kafka has them.
                let producer = producer.clone();
                let records: Vec<OutRecord> = rows.into_iter().map(|r| into_record(r, format)).collect();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    fault_point!(crate::fault::RELAY_BEFORE_SEND);
                    send_in_order(&producer, records).await;
                    fault_point!(crate::fault::RELAY_AFTER_SEND);
                });
                return Published { delivered: ids, failed: Vec::new() };
            }
            fault_point!(crate::fault::RELAY_BEFORE_SEND);
            span.record("messaging.batch.message_count", rows.len());
            if !span.is_disabled() {
                rows.iter().for_each(|r| {
                    let tp = r.headers.get(crate::headers::TRACEPARENT).and_then(|v| v.as_str());
                    crate::telemetry::propagation::add_link(span, tp)
                });
            }
            // (topic index, commit time) per row: a batch has few distinct topics.
            let mut topics: Vec<String> = Vec::new();
            let meta: Vec<(usize, chrono::DateTime<chrono::Utc>)> = rows
                .iter()
                .map(|r| match topics.iter().position(|t| *t == r.topic) {
                    Some(i) => (i, r.created_at),
                    None => {
                        topics.push(r.topic.clone());
                        (topics.len() - 1, r.created_at)
                    }
                })
                .collect();
            let results = send_in_order(producer, rows.into_iter().map(|r| into_record(r, format)).collect()).await;
            let mut out = Published { delivered: Vec::with_capacity(ids.len()), failed: Vec::new() };
            let acked =
                results.iter().zip(&meta).filter(|(r, _)| r.is_ok()).map(|(_, (t, at))| (topics[*t].as_str(), *at));
            self.metrics.batch(meta.len(), acked);
            for (id, res) in ids.into_iter().zip(results) {
                match res {
                    Ok(()) => out.delivered.push(id),
                    Err(e) => {
                        let permanent = crate::kafka::is_permanent_send_error(&e);
                        self.metrics.send_error(permanent);
                        tracing::warn!(message_id = %id, error = %e, permanent, "outbox row not delivered; will retry");
                        out.failed.push(SendFailure { id, error: e, permanent });
                    }
                }
            }
            if !out.delivered.is_empty() {
                fault_point!(crate::fault::RELAY_AFTER_SEND);
            }
            out
        };
        let claimed =
            DB::relay_batch(&self.pool, &self.cfg.sql, self.cfg.batch_size, self.cfg.max_send_attempts, publish).await;
        let published = match claimed {
            Ok(Some(p)) => p,
            Ok(None) => {
                // Another instance publishes: this one has nothing pending of its own.
                self.stats.claimed(None);
                self.stats.oldest_pending(None);
                return Ok(RelayBatch { lock_busy: true, ..RelayBatch::default() });
            }
            Err(e) => {
                self.stats.claim_failed(&e);
                return Err(e);
            }
        };
        let batch =
            RelayBatch { published: published.delivered.len(), failed: published.failed.len(), lock_busy: false };
        self.stats.claimed(Some(&batch));
        if batch.failed == 0 && batch.published < self.cfg.batch_size as usize {
            // Every pending row was in this batch and is delivered.
            self.stats.oldest_pending(None);
        }
        self.stats.published.fetch_add(batch.published as u64, Ordering::Relaxed);
        self.stats.failed.fetch_add(batch.failed as u64, Ordering::Relaxed);
        if batch.published > 0 {
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
        }
        Ok(batch)
    }

    /// Deletes delivered rows older than the retention, in statements of at most
    /// 10 000 rows, until none is left. Returns the number of rows deleted.
    ///
    /// # Errors
    /// [`Error::Database`] when a delete fails.
    pub async fn cleanup_once(&self) -> Result<u64, Error> {
        let mut total = 0;
        loop {
            let n = DB::cleanup_outbox(&self.pool, &self.cfg.sql, crate::store::cutoff(self.cfg.retention))
                .await
                .map_err(Error::db("delete delivered outbox rows"))?;
            total += n;
            self.stats.deleted.fetch_add(n, Ordering::Relaxed);
            if n < DELETE_BATCH {
                return Ok(total);
            }
        }
    }

    /// Runs until `shutdown` is cancelled, then flushes the producer. Errors of a
    /// batch (database, broker) are logged and retried after `poll_interval`.
    ///
    /// # Errors
    /// None today: failures while running are retried. The `Result` is the workers'
    /// common signature ([`WorkerHandle::shutdown`]).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let mut listener = DB::outbox_listener(&self.pool).await;
        let mut last_cleanup = Instant::now();
        let mut last_backlog: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            if last_backlog.is_none_or(|t| t.elapsed() >= crate::telemetry::METRICS_INTERVAL) {
                last_backlog = Some(Instant::now());
                match DB::outbox_backlog(&self.pool, &self.cfg.backlog_sql).await {
                    Ok(b) => self.metrics.backlog(&b),
                    Err(e) => tracing::debug!(error = %e, "outbox counts for the metrics not read"),
                }
            }
            let more = match self.relay_once().await {
                Ok(b) => !b.lock_busy && b.published + b.failed == self.cfg.batch_size as usize && b.failed == 0,
                Err(e) => {
                    tracing::warn!(error = %crate::report(&e), "outbox relay batch failed");
                    false
                }
            };
            if !self.cfg.retention.is_zero() && last_cleanup.elapsed() >= self.cfg.cleanup_interval {
                last_cleanup = Instant::now();
                if let Err(e) = self.cleanup_once().await {
                    tracing::warn!(error = %crate::report(&e), "outbox cleanup failed");
                }
            }
            if more {
                continue;
            }
            let notified = async {
                match listener.as_mut() {
                    Some(l) => {
                        if let Err(e) = l.recv().await {
                            tracing::debug!(error = %e, "outbox listener interrupted");
                            tokio::time::sleep(self.cfg.poll_interval).await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        crate::worker::flush(&self.producer).await;
        tracing::info!(table = %self.cfg.table, "outbox relay stopped");
        Ok(())
    }

    /// Spawns [`OutboxRelay::run`] on the current Tokio runtime; the handle's name is
    /// the outbox table.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn spawn(self) -> RelayHandle {
        WorkerHandle::spawn(self.cfg.table.clone(), self.stats.clone(), |shutdown| self.run(shutdown))
    }
}
