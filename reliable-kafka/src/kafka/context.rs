//! A librdkafka client context that logs through `tracing`, tagged with the worker.

use rdkafka::error::KafkaError;
use rdkafka::ClientContext;

/// Logs librdkafka's messages and client errors at the matching `tracing` level, with
/// the worker's name (consumer group, outbox table) as field `worker`.
#[derive(Debug, Clone)]
pub(crate) struct LogContext {
    pub(crate) worker: String,
}

impl ClientContext for LogContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        let worker = &self.worker;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => tracing::error!(worker, fac, "{log_message}"),
            L::Warning => tracing::warn!(worker, fac, "{log_message}"),
            L::Notice | L::Info => tracing::info!(worker, fac, "{log_message}"),
            L::Debug => tracing::debug!(worker, fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(worker = %self.worker, error = %error, "kafka client error: {reason}");
    }
}

/// Whether a client reaches its brokers, as librdkafka reports it: down from an
/// "all brokers down" error until a statistics report shows a broker connection up
/// again. Shared between a client's context and its worker's health.
#[derive(Debug, Default)]
pub(crate) struct BrokerState {
    /// Since when all brokers are down, ms since the epoch; 0 when not down.
    down_since_ms: std::sync::atomic::AtomicU64,
    /// The sum of the consumer lag of the assigned partitions in the last statistics
    /// (records); -1 before any.
    consumer_lag: std::sync::atomic::AtomicI64,
}

impl BrokerState {
    pub(crate) fn new() -> Self {
        BrokerState { down_since_ms: Default::default(), consumer_lag: std::sync::atomic::AtomicI64::new(-1) }
    }

    /// How long all brokers have been down, if they are.
    pub(crate) fn down_for(&self) -> Option<std::time::Duration> {
        match self.down_since_ms.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            since => Some(std::time::Duration::from_millis(crate::health::now_ms().saturating_sub(since))),
        }
    }

    /// The consumer lag of the last statistics, if any.
    pub(crate) fn consumer_lag(&self) -> Option<i64> {
        Some(self.consumer_lag.load(std::sync::atomic::Ordering::Relaxed)).filter(|l| *l >= 0)
    }

    /// A request succeeded (a record fetched or acknowledged): a broker is reachable.
    pub(crate) fn reachable(&self) {
        if self.down_since_ms.load(std::sync::atomic::Ordering::Relaxed) != 0 {
            self.down_since_ms.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Takes a client error into account.
    pub(crate) fn on_error(&self, error: &KafkaError) {
        use rdkafka::types::RDKafkaErrorCode;
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            let _ = self.down_since_ms.compare_exchange(
                0,
                crate::health::now_ms().max(1),
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    /// Takes a statistics report (librdkafka's JSON) into account: a broker connection
    /// up ends "down"; the consumer lag of the assigned partitions is summed. Only
    /// those fields are decoded: the full report (every window and histogram) costs
    /// milliseconds on the client's poll thread, which delays deliveries.
    /// Reads the statistics report `json` of the client of consumer group (or worker) `group`.
    pub(crate) fn on_statistics(&self, json: &[u8], group: &str) {
        use std::sync::atomic::Ordering;
        let Ok(s) = serde_json::from_slice::<stats::Report>(json) else { return };
        if s.brokers.values().any(|b| b.state == "UP" && b.source != "logical") {
            self.down_since_ms.store(0, Ordering::Relaxed);
        }
        if s.client_type == "consumer" {
            let gauge = crate::telemetry::record::consumer_lag(group);
            let mut lag = 0;
            for (topic, t) in &s.topics {
                for p in t.partitions.values().filter(|p| p.partition >= 0 && p.consumer_lag >= 0) {
                    lag += p.consumer_lag;
                    gauge(topic, p.partition, p.consumer_lag);
                }
            }
            self.consumer_lag.store(lag, Ordering::Relaxed);
        }
    }
}

/// The context of the framework's producers: logging, and the brokers' reachability
/// for the worker's health.
#[derive(Debug, Clone)]
pub(crate) struct HealthContext {
    pub(crate) log: LogContext,
    pub(crate) brokers: std::sync::Arc<BrokerState>,
}

impl HealthContext {
    pub(crate) fn new(worker: impl Into<String>) -> Self {
        HealthContext { log: LogContext { worker: worker.into() }, brokers: std::sync::Arc::new(BrokerState::new()) }
    }
}

impl ClientContext for HealthContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.log.log(level, fac, log_message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.brokers.on_error(&error);
        self.log.error(error, reason)
    }

    fn stats_raw(&self, statistics: &[u8]) {
        self.brokers.on_statistics(statistics, &self.log.worker);
    }
}

/// The fields of librdkafka's statistics report that health reads
/// (`STATISTICS.md` of librdkafka); the others are skipped unparsed.
mod stats {
    use std::collections::HashMap;

    #[derive(serde::Deserialize)]
    pub(super) struct Report {
        #[serde(rename = "type")]
        pub client_type: String,
        #[serde(default)]
        pub brokers: HashMap<String, Broker>,
        #[serde(default)]
        pub topics: HashMap<String, Topic>,
    }

    #[derive(serde::Deserialize)]
    pub(super) struct Broker {
        pub state: String,
        #[serde(default)]
        pub source: String,
    }

    #[derive(serde::Deserialize)]
    pub(super) struct Topic {
        #[serde(default)]
        pub partitions: HashMap<String, Partition>,
    }

    #[derive(serde::Deserialize)]
    pub(super) struct Partition {
        pub partition: i32,
        #[serde(default = "unknown")]
        pub consumer_lag: i64,
    }

    fn unknown() -> i64 {
        -1
    }
}

/// The producers of the relay, the dead-letter publisher and the re-driver.
pub(crate) type Producer = rdkafka::producer::FutureProducer<HealthContext>;

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode;

    #[test]
    fn statistics_end_an_outage_and_give_the_consumer_lag() {
        let b = BrokerState::new();
        b.on_error(&KafkaError::Global(RDKafkaErrorCode::AllBrokersDown));
        assert!(b.down_for().is_some());
        let down = br#"{"type":"consumer","ts":1,"brokers":{"127.0.0.1:9092/1":{"state":"TRY_CONNECT","source":"learned","rtt":{"min":0}},
            "GroupCoordinator":{"state":"UP","source":"logical"}},"topics":{}}"#;
        b.on_statistics(down, "g");
        assert!(b.down_for().is_some(), "a logical broker is no connection");
        let up = br#"{"type":"consumer","brokers":{"127.0.0.1:9092/1":{"state":"UP","source":"learned"}},
            "topics":{"t":{"partitions":{"0":{"partition":0,"consumer_lag":7},"1":{"partition":1,"consumer_lag":-1},"-1":{"partition":-1,"consumer_lag":99}}}}}"#;
        b.on_statistics(up, "g");
        assert_eq!((b.down_for(), b.consumer_lag()), (None, Some(7)));
        b.on_statistics(b"not json", "g");
        assert_eq!(b.consumer_lag(), Some(7), "a report that does not parse changes nothing");
    }
}
