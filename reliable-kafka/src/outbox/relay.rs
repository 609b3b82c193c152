//! The outbox relay: publishes committed outbox rows to Kafka.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Pool;
use tokio_util::sync::CancellationToken;

use super::pipeline::Until;
use super::record::HeaderFormat;
use super::stats::RelayStats;
use crate::error::validate_identifier;
use crate::kafka::{HealthContext, Producer};
use crate::store::outbox::OutboxListener;
use crate::store::sql::DELETE_BATCH;
use crate::telemetry::record::RelayMetrics;
use crate::worker::WorkerHandle;
use crate::{Backend, ConfigError, DefaultBackend, Error, KafkaConfig};

/// Publishes committed outbox rows to Kafka, in insertion order per key.
///
/// How it works:
/// 1. **Lease.** The relay takes a session-level advisory lock on the table (key derived
///    from the table's OID) on a connection of its own, and keeps it while it runs: of
///    several instances exactly one publishes, the others retry at each wake-up. With
///    [`OutboxRelayBuilder::shards`] > 1 the rows are split into shards by key and
///    every instance holds the locks of its share of them, so several instances publish
///    at once (see there).
/// 2. **Claim.** Up to `batch_size` undelivered rows in `seq` order. Rows are selected by
///    their state, not by a high-water mark, so a row whose transaction commits late
///    (after rows with a higher `seq`) is never skipped.
/// 3. **Send.** The rows go to the idempotent producer (`acks=all`) in order.
/// 4. **Pipeline.** While a batch waits for its acknowledgements, the next one is claimed
///    (leaving out the rows in flight) and handed to the producer; so the database and
///    the broker work at the same time.
/// 5. **Settle.** After its own acknowledgements, a batch's delivered rows are marked in
///    one statement (or deleted when retention is zero) and a failed attempt is counted
///    on the others. A row is never marked before the broker has it.
///
/// A crash between 3 and 5 republishes the rows in flight (at most two batches):
/// delivery is at-least-once, and the idempotent consumer removes the duplicates.
///
/// Per-key order holds while sends succeed (librdkafka keeps order per partition with
/// the idempotent producer, and batches are enqueued in claim order). A row
/// whose send fails after librdkafka's own retries (`message.timeout.ms`) is retried
/// after a pause (`poll_interval`), *after* later rows of its key that were sent in the
/// same batch or the one after it (the relay claims nothing new once a batch has
/// failed sends). Rows
/// the broker rejects as such (too large, invalid) `max_send_attempts` times are parked
/// (`parked_at` and `last_error` set) and no longer tried; outages never park a row
/// (see [`RelayStats::failed`]). Order is the insertion order
/// (`seq`) of rows visible at claim time; transactions that touch the same aggregate
/// should lock it (as an `UPDATE` does) so that insertion order is commit order.
///
/// No transaction stays open while the broker acknowledges (0.1's relay held one), so
/// `idle_in_transaction_session_timeout` does not concern the relay. Its session does
/// stay idle between batches: keep `idle_session_timeout`, if set, above
/// `poll_interval` (a killed session costs a reconnect, nothing else). The session is a
/// connection of its own, opened with the pool's options, beside the pool.
///
/// The relay wakes on `NOTIFY rk_outbox` (sent by the table's trigger at commit) and
/// polls every `poll_interval` in case a notification was missed.
///
/// On SQLite ([`crate::Sqlite`]) there is one writer at a time, so insertion order is
/// commit order: the relay reads pending rows without a transaction, publishes them and
/// marks them in a short `BEGIN IMMEDIATE` transaction, and it wakes every
/// `poll_interval` (no notifications). Run one relay per database file.
pub struct OutboxRelay<DB: Backend = DefaultBackend> {
    pub(super) pool: Pool<DB>,
    pub(super) producer: crate::kafka::Producer,
    pub(super) cfg: RelayConfig<DB>,
    pub(super) stats: Arc<RelayStats>,
    pub(super) metrics: RelayMetrics,
}

impl<DB: Backend> std::fmt::Debug for OutboxRelay<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay").field("cfg", &self.cfg).field("stats", &self.stats).finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub(super) struct RelayConfig<DB: Backend> {
    pub(super) batch_size: i64,
    poll_interval: Duration,
    retention: Duration,
    cleanup_interval: Duration,
    pub(super) max_send_attempts: i32,
    pub(super) header_format: HeaderFormat,
    pub(super) table: String,
    shards: u32,
    rebalance_interval: Duration,
    pub(super) sql: DB::RelaySql,
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
    shards: u32,
    rebalance_interval: Duration,
}

/// Most shards of one outbox table.
pub const MAX_SHARDS: u32 = 1024;

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

    /// Validates the settings and creates the producer.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key of an invalid setting (`outbox_table`,
    /// `batch_size`, `poll_interval`, `cleanup_interval`, `max_send_attempts`,
    /// `header_format`, `shards`, `rebalance_interval`);
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
            sql: DB::relay_sql(&self.table, self.retention.is_zero(), self.shards),
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
        }
    }

    /// The relay's counters.
    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Publishes one batch (see the type's documentation): takes the lease, claims,
    /// sends, awaits the acknowledgements, settles, gives the lease back.
    ///
    /// # Errors
    /// [`Error::Database`] when the claim or mark fails; the rows stay pending (they may
    /// have been sent: at-least-once).
    pub async fn relay_once(&self) -> Result<RelayBatch, Error> {
        self.leased(false, Until { batches: Some(1), ..Until::default() }).await
    }

    /// Publishes every row pending now, pipelined (see the type's documentation), and
    /// returns the totals once a claim comes back short and every batch is settled.
    /// Rows committed meanwhile may be included.
    ///
    /// # Errors
    /// As [`OutboxRelay::relay_once`].
    pub async fn drain(&self) -> Result<RelayBatch, Error> {
        self.leased(false, Until::default()).await
    }

    /// Takes the lease, runs the pipeline and gives the lease back.
    pub(crate) async fn leased(&self, stub: bool, until: Until) -> Result<RelayBatch, Error> {
        let Some(mut lease) = self.lease().await? else {
            return Ok(RelayBatch { lock_busy: true, ..RelayBatch::default() });
        };
        let result = self.pipeline(&mut lease, stub, until).await;
        if result.is_ok() {
            DB::release_relay(lease).await;
        }
        result.map(|(batch, _)| batch)
    }

    /// Takes the relay's lease; `None` (and stats saying so) when another instance
    /// holds it.
    async fn lease(&self) -> Result<Option<DB::RelayLease>, Error> {
        match DB::lease_relay(&self.pool, &self.cfg.sql).await {
            Ok(Some(lease)) => {
                self.stats.claim_succeeded();
                Ok(Some(lease))
            }
            Ok(None) => {
                // Another instance publishes: this one has nothing pending of its own.
                self.stats.claimed(None);
                self.stats.oldest_pending(None);
                Ok(None)
            }
            Err(e) => {
                self.stats.claim_failed(&e);
                Err(e)
            }
        }
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
        let mut lease: Option<DB::RelayLease> = None;
        let sharded = self.cfg.shards > 1;
        let mut next_rebalance = Instant::now();
        // A database that refuses connections is asked again 100 ms, 200 ms, … 5 s later.
        let mut lease_backoff = crate::worker::InfraBackoff::new();
        while !shutdown.is_cancelled() {
            if last_backlog.is_none_or(|t| t.elapsed() >= crate::telemetry::METRICS_INTERVAL) {
                last_backlog = Some(Instant::now());
                match DB::outbox_backlog(&self.pool, &self.cfg.backlog_sql).await {
                    Ok(b) => self.metrics.backlog(&b),
                    Err(e) => tracing::debug!(error = %e, "outbox counts for the metrics not read"),
                }
            }
            if lease.is_none() {
                match self.lease().await {
                    Ok(l) => {
                        lease = l;
                        lease_backoff = crate::worker::InfraBackoff::new();
                    }
                    Err(e) => {
                        let wait = lease_backoff.next_delay();
                        tracing::warn!(error = %crate::report(&e), retry_in_ms = wait.as_millis() as u64, "outbox relay cannot take its lock");
                        if crate::worker::sleep_or_shutdown(wait, &shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
                // Rebalance at once: the stats learn the shards taken.
                next_rebalance = Instant::now();
            }
            let more = match lease.as_mut() {
                None => false,
                Some(held) => {
                    let mut rebalanced = Ok(());
                    if sharded && Instant::now() >= next_rebalance {
                        next_rebalance = Instant::now() + self.cfg.rebalance_interval;
                        rebalanced =
                            DB::rebalance_relay(held, &self.cfg.sql).await.map(|shards| self.stats.set_shards(shards));
                    }
                    // Back to the loop at least every metrics interval (gauges, cleanup),
                    // and by the next rebalance when sharded.
                    let pause = Instant::now() + crate::telemetry::METRICS_INTERVAL;
                    let until = Until {
                        batches: None,
                        deadline: Some(if sharded { next_rebalance.min(pause) } else { pause }),
                        shutdown: Some(shutdown.clone()),
                    };
                    let ran = match rebalanced {
                        Ok(()) => self.pipeline(held, false, until).await,
                        Err(e) => Err(e),
                    };
                    match ran {
                        // Stopped by the deadline or the shutdown with rows left and no
                        // failures: go on at once; else wait for a wake-up.
                        Ok((_, more)) => more,
                        Err(e) => {
                            // The session may be gone with its locks: start over.
                            tracing::warn!(error = %crate::report(&e), "outbox relay batch failed");
                            lease = None;
                            false
                        }
                    }
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
        if let Some(held) = lease {
            DB::release_relay(held).await;
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
