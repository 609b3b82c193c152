//! [`ContainerStats`]: the counters of a listener container.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::health::{human, sealed, Health, HealthStatus, WorkerHealth};
use crate::kafka::BrokerState;
use crate::CircuitState;

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
    /// When the poll loop last asked librdkafka for a record (ms since `started`).
    last_poll_ms: AtomicU64,
    pub(crate) assigned: AtomicU64,
    pub(crate) ever_assigned: AtomicBool,
    pub(crate) paused: AtomicU64,
    pub(crate) deferred: AtomicU64,
    /// The circuit breakers' states, by handler (event type).
    circuits: Mutex<BTreeMap<String, CircuitState>>,
    max_poll_interval: Duration,
    pub(crate) brokers: Arc<BrokerState>,
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
            last_poll_ms: AtomicU64::new(0),
            assigned: AtomicU64::new(0),
            ever_assigned: AtomicBool::new(false),
            paused: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
            circuits: Mutex::default(),
            max_poll_interval: Duration::from_millis(300_000),
            brokers: Arc::new(BrokerState::new()),
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
    /// Partitions assigned to this member now.
    pub fn assigned_partitions(&self) -> u64 {
        self.assigned.load(Ordering::Relaxed)
    }
    /// Records written to the key-blocking table (`rk_blocked_records`): a failing
    /// record of a key-blocking handler, or one whose key was blocked by an earlier one.
    pub fn deferred(&self) -> u64 {
        self.deferred.load(Ordering::Relaxed)
    }
    /// Partitions paused now: each holds a record waiting for its next attempt, for its
    /// retry topic's due time, or for an open circuit breaker (partitions).
    pub fn paused_partitions(&self) -> u64 {
        self.paused.load(Ordering::Relaxed)
    }
    /// The state of the circuit breaker of the handler of `event_type`; `None` when it
    /// has none.
    pub fn circuit(&self, event_type: &str) -> Option<CircuitState> {
        self.circuits.lock().unwrap_or_else(|p| p.into_inner()).get(event_type).copied()
    }
    /// Every circuit breaker's state, by handler (event type).
    pub fn circuits(&self) -> Vec<(String, CircuitState)> {
        self.circuits.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
    pub(crate) fn set_circuit(&self, event_type: &str, state: CircuitState) {
        self.circuits.lock().unwrap_or_else(|p| p.into_inner()).insert(event_type.to_owned(), state);
    }
    /// The consumer lag of the assigned partitions (records), from librdkafka's last
    /// statistics (`statistics.interval.ms`); `None` before any or when they are off.
    pub fn consumer_lag(&self) -> Option<i64> {
        self.brokers.consumer_lag()
    }
    /// Time since the poll loop last polled the consumer (it does so at least every
    /// 100 ms while idle; a handler call in hand holds it).
    pub fn since_last_poll(&self) -> Duration {
        let last = Duration::from_millis(self.last_poll_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
    pub(crate) fn with_limits(max_poll_interval: Duration) -> Self {
        ContainerStats { max_poll_interval, ..Default::default() }
    }
    pub(crate) fn polled(&self) {
        self.last_poll_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    pub(crate) fn touch(&self) {
        self.last_activity_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl sealed::Sealed for ContainerStats {}

impl WorkerHealth for ContainerStats {
    fn health(&self, worker: &str) -> Health {
        let mut h = Health::new(worker);
        h.consumer_lag = self.consumer_lag();
        if let Some(down) = self.brokers.down_for() {
            h.found(HealthStatus::Unhealthy, format!("all brokers down for {}", human(down)));
        }
        let since = self.since_last_poll();
        if since > self.max_poll_interval {
            h.found(
                HealthStatus::Unhealthy,
                format!(
                    "not polled for {} (> max.poll.interval.ms {}): the group evicts this member",
                    human(since),
                    human(self.max_poll_interval)
                ),
            );
        } else if since > self.max_poll_interval / 2 {
            h.found(HealthStatus::Degraded, format!("not polled for {} (a slow handler?)", human(since)));
        }
        let (paused, assigned) = (self.paused_partitions(), self.assigned_partitions());
        if paused > 0 && paused >= assigned {
            h.found(
                HealthStatus::Degraded,
                format!(
                    "all {assigned} assigned partitions paused: their records wait for a retry or a closed circuit"
                ),
            );
        }
        for (handler, state) in self.circuits() {
            if state != CircuitState::Closed {
                h.found(
                    HealthStatus::Degraded,
                    format!("circuit {} for handler {handler}: its downstream is unavailable", state.as_str()),
                );
            }
        }
        if self.assigned_partitions() == 0 {
            let why = if self.ever_assigned.load(Ordering::Relaxed) {
                "no partition assigned"
            } else {
                "not assigned partitions yet"
            };
            h.found(HealthStatus::Degraded, why.to_owned());
        }
        h
    }
}
