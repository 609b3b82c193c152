//! Publishing a record to its dead-letter topic, with Spring Kafka's `kafka_dlt-*`
//! headers ([`crate::DeadLetterInfo`]).

use rdkafka::message::{Header, Headers, Message};

use super::pipeline::{Outcome, Pipeline, Stop};
use super::stats::ContainerStats;
use crate::kafka::{is_size_error, send_one, OutRecord};
use crate::worker::InfraBackoff;
use crate::{headers, Backend, DeadLetterInfo, DeadLetterReason, TimestampType};

/// Why a record is dead-lettered: the reason, the Rust path of the error, the error
/// with its source chain (the header's text), and the attempts made.
pub(crate) struct Failure {
    reason: DeadLetterReason,
    error_kind: &'static str,
    message: String,
    attempts: u32,
}

impl Failure {
    pub(crate) fn new(
        reason: DeadLetterReason,
        error_kind: &'static str,
        error: &(dyn std::error::Error + 'static),
        attempts: u32,
    ) -> Self {
        Failure { reason, error_kind, message: crate::report(error), attempts }
    }
}

impl<DB: Backend> Pipeline<DB> {
    /// Publishes `msg` to `dead_letter_topic`, retrying the publish until it
    /// succeeds or `stop` comes. A record too large for the dead-letter producer is
    /// sent without its payload (it stays at the original offset), else the partition
    /// would stall on it.
    pub(crate) async fn dead_letter<M: Message + Sync>(
        &self,
        msg: &M,
        dead_letter_topic: &str,
        failure: Failure,
        stop: Stop<'_>,
    ) -> Outcome {
        let reason = failure.reason;
        let attempts = failure.attempts;
        let info = dead_letter_info(msg, &self.group, failure);
        let traceparent = msg.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == headers::TRACEPARENT)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
        });
        let span = crate::telemetry::spans::dead_letter(&info, dead_letter_topic, traceparent);
        use tracing::Instrument;
        async move {
            tracing::error!(group = %self.group, topic = %info.original_topic, partition = info.original_partition,
                offset = info.original_offset, %reason, attempts,
                error = %info.error_message, %dead_letter_topic, "dead-lettering record");
            let base = msg.headers().map(|h| crate::envelope::copy_headers(h, 12)).unwrap_or_default();
            let size = msg.payload().map_or(0, <[u8]>::len);
            let mut backoff = InfraBackoff::new();
            let mut omit_payload = false;
            loop {
                let mut headers = info.append_to(base.clone());
                if omit_payload {
                    headers = headers.insert(Header { key: headers::DLT_PAYLOAD_OMITTED, value: Some(&size.to_string()) });
                }
                let record = OutRecord {
                    topic: dead_letter_topic.to_owned(),
                    key: msg.key().map(<[u8]>::to_vec),
                    payload: if omit_payload { None } else { msg.payload().map(<[u8]>::to_vec) },
                    headers,
                };
                // A publish waits for its acknowledgement up to `message.timeout.ms` (300 s)
                // while the broker is down: a revoke abandons it, shutdown gives it
                // PRODUCER_FLUSH_TIMEOUT. Either way the record's offset is not stored; its
                // next owner dead-letters it again (a dead letter may then exist twice).
                let sent = tokio::select! {
                    r = send_one(&self.producer, record) => r,
                    _ = stop.revoked.cancelled() => return Outcome::Interrupted,
                    _ = async {
                        stop.shutdown.cancelled().await;
                        tokio::time::sleep(crate::PRODUCER_FLUSH_TIMEOUT).await;
                    } => {
                        tracing::warn!(group = %self.group, %dead_letter_topic,
                            "shutdown: the dead-letter publish was not acknowledged in time; the record is left uncommitted");
                        return Outcome::Interrupted;
                    }
                };
                match sent {
                    Ok(()) => {
                        ContainerStats::add(&self.stats.dead_lettered, 1);
                        self.metrics.topic(msg.topic()).dead_lettered.increment(1);
                        crate::telemetry::record::dead_lettered(&self.group, msg.topic(), reason.as_str());
                        return Outcome::Done { retried: attempts > 1 };
                    }
                    Err(e) if !omit_payload && is_size_error(&e) => {
                        tracing::warn!(group = %self.group, error = %e, payload_bytes = size,
                            "dead-letter record rejected; sending it without its payload");
                        omit_payload = true;
                        continue;
                    }
                    Err(e) => {
                        ContainerStats::add(&self.stats.infrastructure_errors, 1);
                        tracing::warn!(group = %self.group, error = %e, "dead-letter publish failed; retrying");
                    }
                }
                if stop.sleep(backoff.next_delay()).await {
                    return Outcome::Interrupted;
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// The dead-letter headers' facts of `msg`: where it came from (with its own
/// timestamp type), which group gave up, and why.
pub(crate) fn dead_letter_info<M: Message>(msg: &M, group: &str, failure: Failure) -> DeadLetterInfo {
    let (timestamp_ms, timestamp_type) = match TimestampType::of(msg.timestamp()) {
        Some((ms, t)) => (Some(ms), t),
        None => (None, TimestampType::CreateTime),
    };
    DeadLetterInfo {
        original_topic: msg.topic().to_owned(),
        original_partition: msg.partition(),
        original_offset: msg.offset(),
        original_timestamp_ms: timestamp_ms,
        original_timestamp_type: timestamp_type,
        consumer_group: group.to_owned(),
        reason: Some(failure.reason),
        error_kind: failure.error_kind.to_owned(),
        error_message: failure.message,
        attempts: failure.attempts,
    }
}
