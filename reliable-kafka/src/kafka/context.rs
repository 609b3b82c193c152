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
