//! The outbox relay: publishes committed outbox rows to Kafka.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Pool;
use tokio_util::sync::CancellationToken;

use super::pipeline::Until;
use super::record::HeaderFormat;
use super::stats::RelayStats;
use crate::store::outbox::OutboxListener;
use crate::store::sql::DELETE_BATCH;
use crate::telemetry::record::RelayMetrics;
use crate::worker::WorkerHandle;
use crate::{Backend, DefaultBackend, Error};

/// Publishes committed outbox rows to Kafka, in insertion order per key.
///
/// How it works:
/// 1. **Lease.** The relay takes a session-level advisory lock on the table (key derived
///    from the table's OID) on a connection of its own, and keeps it while it runs: of
///    several instances exactly one publishes, the others retry at each wake-up. With
///    [`OutboxRelayBuilder::shards`](crate::OutboxRelayBuilder::shards) > 1 the rows are split into shards by key and
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
    pub(super) producer: super::sequence::ProducerSlot,
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
    pub(super) poll_interval: Duration,
    pub(super) retention: Duration,
    pub(super) cleanup_interval: Duration,
    pub(super) max_send_attempts: i32,
    pub(super) header_format: HeaderFormat,
    pub(super) table: String,
    pub(super) shards: u32,
    pub(super) rebalance_interval: Duration,
    pub(super) sql: DB::RelaySql,
    pub(super) backlog_sql: String,
    /// Rows carry the relay's sequence numbers (`sequence.rs`).
    pub(super) sequenced: bool,
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

impl<DB: Backend> OutboxRelay<DB> {
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
        crate::worker::flush(&self.producer.get()).await;
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
