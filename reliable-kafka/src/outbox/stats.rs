//! [`RelayStats`]: the counters of a relay, and its health.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::relay::RelayBatch;
use crate::health::{human, now_ms, sealed, Health, HealthStatus, WorkerHealth};
use crate::kafka::BrokerState;

/// Counters of a relay, shared with its [`super::RelayHandle`].
#[derive(Debug)]
pub struct RelayStats {
    pub(crate) published: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) deleted: AtomicU64,
    pub(crate) producer_renewals: AtomicU64,
    /// Insert time of the oldest row of the last claim, ms since the epoch; 0: none
    /// pending.
    oldest_pending_ms: AtomicU64,
    /// When a batch last delivered a row, ms since the epoch; 0: never.
    last_delivery_ms: AtomicU64,
    /// Failed sends of the last batch.
    last_failed: AtomicU64,
    /// The error of the last claim, while claims fail.
    claim_error: Mutex<Option<String>>,
    /// The shards held, for a sharded relay.
    shards: Mutex<Vec<u32>>,
    max_pending_age: Duration,
    brokers: Arc<BrokerState>,
}

impl Default for RelayStats {
    fn default() -> Self {
        RelayStats::new(Arc::new(BrokerState::new()), super::DEFAULT_MAX_PENDING_AGE)
    }
}

impl RelayStats {
    pub(crate) fn new(brokers: Arc<BrokerState>, max_pending_age: Duration) -> Self {
        RelayStats {
            published: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
            producer_renewals: AtomicU64::new(0),
            oldest_pending_ms: AtomicU64::new(0),
            last_delivery_ms: AtomicU64::new(0),
            last_failed: AtomicU64::new(0),
            claim_error: Mutex::new(None),
            shards: Mutex::new(Vec::new()),
            max_pending_age,
            brokers,
        }
    }

    /// Rows published and marked (records).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
    /// Failed send attempts (records).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    /// Producers replaced after a fatal error (relays with sequence numbers, whose
    /// producer stops instead of leaving a gap; see
    /// `OutboxRelayBuilder::sequence_numbers`).
    pub fn producer_renewals(&self) -> u64 {
        self.producer_renewals.load(Ordering::Relaxed)
    }
    /// Batches that published at least one row.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
    /// The shards this instance publishes now, ascending: empty for an unsharded relay
    /// and for one whose share is empty (more instances than shards).
    pub fn shards(&self) -> Vec<u32> {
        self.shards.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub(crate) fn set_shards(&self, shards: Vec<u32>) {
        *self.shards.lock().unwrap_or_else(|p| p.into_inner()) = shards;
    }
    /// Delivered rows deleted by retention (records).
    pub fn deleted(&self) -> u64 {
        self.deleted.load(Ordering::Relaxed)
    }
    /// Age of the oldest row of the last claim while it is not delivered; `None` when
    /// the last batch delivered every pending row.
    pub fn oldest_pending_age(&self) -> Option<Duration> {
        match self.oldest_pending_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_millis(now_ms().saturating_sub(at))),
        }
    }
    /// Time since a batch last delivered a row; `None` before the first.
    pub fn since_last_delivery(&self) -> Option<Duration> {
        match self.last_delivery_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_millis(now_ms().saturating_sub(at))),
        }
    }

    pub(crate) fn oldest_pending(&self, created_at: Option<DateTime<Utc>>) {
        let ms = created_at.map_or(0, |t| u64::try_from(t.timestamp_millis()).unwrap_or(1).max(1));
        self.oldest_pending_ms.store(ms, Ordering::Relaxed);
    }

    /// A claim succeeded (`None`: another instance held the lock).
    pub(crate) fn claimed(&self, batch: Option<&RelayBatch>) {
        *self.claim_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let failed = batch.map_or(0, |b| b.failed as u64);
        self.last_failed.store(failed, Ordering::Relaxed);
        if batch.is_some_and(|b| b.published > 0) {
            self.last_delivery_ms.store(now_ms(), Ordering::Relaxed);
            // An acknowledged delivery: a broker is reachable.
            self.brokers.reachable();
        }
    }

    /// A claim (or the lease) worked: the last claim error no longer holds.
    pub(crate) fn claim_succeeded(&self) {
        *self.claim_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub(crate) fn claim_failed(&self, e: &crate::Error) {
        *self.claim_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(crate::report(e));
    }
}

impl sealed::Sealed for RelayStats {}

impl WorkerHealth for RelayStats {
    fn health(&self, worker: &str) -> Health {
        let mut h = Health::new(worker);
        if let Some(down) = self.brokers.down_for() {
            // An idle producer's connections may be closed by the broker; down only
            // matters while rows wait.
            let status =
                if self.oldest_pending_age().is_some() { HealthStatus::Unhealthy } else { HealthStatus::Degraded };
            h.found(status, format!("all brokers down for {}", human(down)));
        }
        if let Some(e) = self.claim_error.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            h.found(HealthStatus::Unhealthy, format!("claiming outbox rows fails: {e}"));
        }
        if let Some(age) = self.oldest_pending_age() {
            let limit = self.max_pending_age;
            if age > limit {
                h.found(
                    HealthStatus::Unhealthy,
                    format!("oldest pending row is {} old (> {})", human(age), human(limit)),
                );
            } else if age > limit / 2 {
                h.found(HealthStatus::Degraded, format!("oldest pending row is {} old", human(age)));
            }
        }
        match self.last_failed.load(Ordering::Relaxed) {
            0 => {}
            n => h.found(HealthStatus::Degraded, format!("{n} rows of the last batch were not delivered")),
        }
        h
    }
}
