//! [`ContainerStats`]: the counters of a listener container.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counters of a container, shared with its [`crate::ContainerHandle`]. Every count is
/// of records unless it says otherwise.
#[derive(Debug)]
pub struct ContainerStats {
    started: Instant,
    pub(crate) received: AtomicU64,
    pub(crate) processed: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) infrastructure_errors: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) batch_fallbacks: AtomicU64,
    last_activity_ms: AtomicU64,
}

impl Default for ContainerStats {
    fn default() -> Self {
        ContainerStats {
            started: Instant::now(),
            received: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            infrastructure_errors: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batch_fallbacks: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
        }
    }
}

impl ContainerStats {
    /// Records received from Kafka.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    /// Records whose handler succeeded and committed.
    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }
    /// Redelivered records skipped because their message id was already processed.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
    /// Handler attempts that failed transiently and were retried.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
    /// Records published to a dead-letter topic.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }
    /// Records committed past because no handler of their topic takes their event type
    /// (with `UnknownEventType::Skip`).
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
    /// Failures of the framework's own database or Kafka calls (retried without limit,
    /// never counted as handler attempts).
    pub fn infrastructure_errors(&self) -> u64 {
        self.infrastructure_errors.load(Ordering::Relaxed)
    }
    /// Transactions that committed a batch of more than one record (transactions).
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
    /// Batches that failed as a whole and were processed again record by record, to
    /// isolate the failing record (batches).
    pub fn batch_fallbacks(&self) -> u64 {
        self.batch_fallbacks.load(Ordering::Relaxed)
    }
    /// Time since the container last received a record or finished one.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
    pub(crate) fn touch(&self) {
        self.last_activity_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}
