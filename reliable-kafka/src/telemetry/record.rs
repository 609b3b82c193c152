//! Where the workers record the standard metrics. Handles are looked up once per
//! topic (lazily, so a recorder installed before the first record is used) and kept;
//! a record then costs the recorder's atomic update only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Histogram};

use super::names::*;

/// Handles by topic, made on first use.
#[derive(Debug)]
pub(crate) struct ByTopic<T>(Mutex<HashMap<String, Arc<T>>>);

impl<T> Default for ByTopic<T> {
    fn default() -> Self {
        ByTopic(Mutex::new(HashMap::new()))
    }
}

impl<T> ByTopic<T> {
    pub(crate) fn get(&self, topic: &str, make: impl FnOnce() -> T) -> Arc<T> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = map.get(topic) {
            return t.clone();
        }
        let t = Arc::new(make());
        map.insert(topic.to_owned(), t.clone());
        t
    }
}

/// `rk_outbox_enqueued_total{topic}`.
pub(crate) fn enqueued(topic: &str) {
    static ENQUEUED: OnceLock<ByTopic<Counter>> = OnceLock::new();
    ENQUEUED
        .get_or_init(ByTopic::default)
        .get(topic, || metrics::counter!(OUTBOX_ENQUEUED, "topic" => topic.to_owned()))
        .increment(1);
}

#[derive(Debug)]
pub(crate) struct RelayTopic {
    published: Counter,
    lag: Histogram,
}

/// The relay's metrics.
#[derive(Debug, Default)]
pub(crate) struct RelayMetrics {
    topics: ByTopic<RelayTopic>,
    /// `rk_relay_send_errors_total` by class: transient, permanent.
    errors: OnceLock<[Counter; 2]>,
}

impl RelayMetrics {
    /// A batch of `claimed` rows, of which `delivered` (topic, commit time) were acknowledged.
    pub(crate) fn batch<'a>(
        &self,
        claimed: usize,
        delivered: impl Iterator<Item = (&'a str, chrono::DateTime<chrono::Utc>)>,
    ) {
        metrics::histogram!(RELAY_BATCH_SIZE).record(claimed as f64);
        self.errors();
        let now = chrono::Utc::now();
        let mut last: Option<(&str, Arc<RelayTopic>)> = None;
        for (topic, created) in delivered {
            let t = match &last {
                Some((name, t)) if *name == topic => t.clone(),
                _ => {
                    let t = self.topics.get(topic, || RelayTopic {
                        published: metrics::counter!(OUTBOX_PUBLISHED, "topic" => topic.to_owned()),
                        lag: metrics::histogram!(RELAY_LAG, "topic" => topic.to_owned()),
                    });
                    last = Some((topic, t.clone()));
                    t
                }
            };
            t.published.increment(1);
            t.lag.record((now - created).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6);
        }
    }

    /// Registered on the first batch, so the exposition shows 0 rather than nothing.
    fn errors(&self) -> &[Counter; 2] {
        self.errors.get_or_init(|| {
            let c = [
                metrics::counter!(RELAY_SEND_ERRORS, "class" => "transient"),
                metrics::counter!(RELAY_SEND_ERRORS, "class" => "permanent"),
            ];
            c.iter().for_each(|c| c.increment(0));
            c
        })
    }

    pub(crate) fn send_error(&self, permanent: bool) {
        self.errors()[permanent as usize].increment(1);
    }

    pub(crate) fn backlog(&self, backlog: &crate::OutboxBacklog) {
        metrics::gauge!(OUTBOX_PENDING).set(backlog.pending as f64);
        metrics::gauge!(OUTBOX_PARKED).set(backlog.parked as f64);
        metrics::gauge!(OUTBOX_OLDEST_PENDING_AGE)
            .set(backlog.oldest_pending_age.unwrap_or(Duration::ZERO).as_secs_f64());
    }
}

/// One consumer group's handles for one topic.
#[derive(Debug)]
pub(crate) struct ConsumerTopic {
    pub processed: Counter,
    pub duplicate: Counter,
    pub retried: Counter,
    pub dead_lettered: Counter,
    pub skipped: Counter,
    pub deferred: Counter,
    pub handler: Histogram,
    pub e2e: Histogram,
}

/// A container's metrics.
#[derive(Debug)]
pub(crate) struct ConsumerMetrics {
    group: Arc<str>,
    topics: ByTopic<ConsumerTopic>,
    batch: OnceLock<Histogram>,
}

impl ConsumerMetrics {
    pub(crate) fn new(group: Arc<str>) -> Self {
        ConsumerMetrics { group, topics: ByTopic::default(), batch: OnceLock::new() }
    }

    pub(crate) fn topic(&self, topic: &str) -> Arc<ConsumerTopic> {
        let group = &self.group;
        self.topics.get(topic, || {
            let outcome = |o: &'static str| {
                metrics::counter!(CONSUMER_RECORDS, "group" => group.to_string(), "topic" => topic.to_owned(), "outcome" => o)
            };
            ConsumerTopic {
                processed: outcome("processed"),
                duplicate: outcome("duplicate"),
                retried: outcome("retried"),
                dead_lettered: outcome("dead_lettered"),
                skipped: outcome("skipped"),
                deferred: outcome("deferred"),
                handler: metrics::histogram!(HANDLER_DURATION, "group" => group.to_string(), "topic" => topic.to_owned()),
                e2e: metrics::histogram!(CONSUMER_E2E_LATENCY, "group" => group.to_string(), "topic" => topic.to_owned()),
            }
        })
    }

    pub(crate) fn batch_size(&self, records: usize) {
        self.batch
            .get_or_init(|| metrics::histogram!(CONSUMER_BATCH_SIZE, "group" => self.group.to_string()))
            .record(records as f64);
    }

    pub(crate) fn paused_partitions(&self, partitions: usize) {
        metrics::gauge!(CONSUMER_PAUSED_PARTITIONS, "group" => self.group.to_string()).set(partitions as f64);
    }
}

impl ConsumerTopic {
    /// A committed batch's counts.
    pub(crate) fn counted(&self, processed: usize, duplicates: usize, skipped: usize) {
        self.processed.increment(processed as u64);
        self.duplicate.increment(duplicates as u64);
        self.skipped.increment(skipped as u64);
    }

    /// The end-to-end latency of a record produced at `produced_at_ms` (epoch ms).
    pub(crate) fn handled(&self, produced_at_ms: Option<i64>, now_ms: u64) {
        if let Some(at) = produced_at_ms {
            self.e2e.record((now_ms as i64 - at).max(0) as f64 / 1e3);
        }
    }
}

/// `rk_consumer_circuit_state{group, handler}`.
pub(crate) fn circuit_state(group: &str, handler: &str) -> metrics::Gauge {
    metrics::gauge!(CONSUMER_CIRCUIT_STATE, "group" => group.to_owned(), "handler" => handler.to_owned())
}

/// `rk_dead_letters_total{group, topic, reason}`.
pub(crate) fn dead_lettered(group: &str, topic: &str, reason: &str) {
    metrics::counter!(DEAD_LETTERS, "group" => group.to_owned(), "topic" => topic.to_owned(), "reason" => reason.to_owned())
        .increment(1);
}

/// `rk_redriven_total{topic}` and `rk_parked_total{topic}`.
pub(crate) fn redrive_run(topic: &str, redriven: u64, parked: u64) {
    metrics::counter!(REDRIVEN, "topic" => topic.to_owned()).increment(redriven);
    metrics::counter!(PARKED, "topic" => topic.to_owned()).increment(parked);
}

/// `rk_consumer_lag{group, topic, partition}`.
pub(crate) fn consumer_lag(group: &str) -> impl Fn(&str, i32, i64) + '_ {
    move |topic, partition, lag| {
        metrics::gauge!(CONSUMER_LAG, "group" => group.to_owned(), "topic" => topic.to_owned(), "partition" => partition.to_string())
            .set(lag as f64);
    }
}
