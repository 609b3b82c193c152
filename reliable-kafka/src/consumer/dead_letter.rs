//! Publishing a record to its dead-letter topic, with Spring Kafka's `kafka_dlt-*`
//! headers ([`crate::DeadLetterInfo`]).

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use super::pipeline::{Outcome, Pipeline, Stop};
use super::retry_topics;
use super::stats::ContainerStats;
use crate::kafka::{is_size_error, send_one, OutRecord};
use crate::worker::InfraBackoff;
use crate::{headers, Backend, DeadLetterInfo, DeadLetterReason, TimestampType};

/// Why a record is dead-lettered: the reason, the Rust path of the error, the error
/// with its source chain (the header's text), and the attempts made.
pub(crate) struct Failure {
    pub(crate) reason: DeadLetterReason,
    error_kind: &'static str,
    message: String,
    pub(crate) attempts: u32,
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
        let span = crate::telemetry::spans::dead_letter(&info, dead_letter_topic, traceparent(msg));
        use tracing::Instrument;
        async move {
            tracing::error!(group = %self.group, topic = %info.original_topic, partition = info.original_partition,
                offset = info.original_offset, %reason, attempts,
                error = %info.error_message, %dead_letter_topic, "dead-lettering record");
            let base = copy_base(msg);
            let size = msg.payload().map_or(0, <[u8]>::len);
            let headers = |omit_payload: bool| {
                let headers = info.append_to(base.clone());
                if omit_payload {
                    headers.insert(Header { key: headers::DLT_PAYLOAD_OMITTED, value: Some(&size.to_string()) })
                } else {
                    headers
                }
            };
            if !self.send_copy(msg, dead_letter_topic, headers, stop).await {
                return Outcome::Interrupted;
            }
            ContainerStats::add(&self.stats.dead_lettered, 1);
            self.metrics.topic(msg.topic()).dead_lettered.increment(1);
            crate::telemetry::record::dead_lettered(&self.group, msg.topic(), reason.as_str());
            Outcome::Done
        }
        .instrument(span)
        .await
    }

    /// Publishes `msg` to the retry topic `retry_topic` for attempt `attempt`, due at
    /// `due_ms` (ms since the epoch), with the retry headers (see
    /// [`crate::RetryTopics`]).
    pub(crate) async fn retry_copy<M: Message + Sync>(
        &self,
        msg: &M,
        retry_topic: &str,
        failure: Failure,
        due_ms: i64,
        stop: Stop<'_>,
    ) -> Outcome {
        let attempt = failure.attempts + 1;
        let mut info = dead_letter_info(msg, &self.group, failure);
        info.reason = None;
        let original_ts = info.original_timestamp_ms;
        tracing::info!(group = %self.group, topic = msg.topic(), partition = msg.partition(), offset = msg.offset(),
            attempt, %retry_topic, error = %info.error_message, "handler failed; record sent to its retry topic");
        let base = copy_base(msg);
        let headers = |_omit: bool| {
            retry_topics::append_retry_headers(info.append_to(base.clone()), attempt, due_ms, original_ts)
        };
        if !self.send_copy(msg, retry_topic, headers, stop).await {
            return Outcome::Interrupted;
        }
        ContainerStats::add(&self.stats.retries, 1);
        self.metrics.topic(msg.topic()).retried.increment(1);
        Outcome::Done
    }

    /// Sends a copy of `msg` (its key and payload, `headers(omit_payload)`) to `topic`
    /// until the broker acknowledges it; `false` when a revoke or shutdown came first.
    /// A copy too large for the producer goes again without its payload.
    async fn send_copy<M: Message + Sync>(
        &self,
        msg: &M,
        topic: &str,
        headers: impl Fn(bool) -> OwnedHeaders,
        stop: Stop<'_>,
    ) -> bool {
        let mut backoff = InfraBackoff::new();
        let mut omit_payload = false;
        loop {
            let record = OutRecord {
                topic: topic.to_owned(),
                key: msg.key().map(<[u8]>::to_vec),
                payload: if omit_payload { None } else { msg.payload().map(<[u8]>::to_vec) },
                headers: headers(omit_payload),
            };
            // A publish waits for its acknowledgement up to `message.timeout.ms` (300 s)
            // while the broker is down: a revoke abandons it, shutdown gives it
            // PRODUCER_FLUSH_TIMEOUT. Either way the record's offset is not stored; its
            // next owner publishes it again (the copy may then exist twice).
            let sent = tokio::select! {
                r = send_one(&self.producer, record) => r,
                _ = stop.revoked.cancelled() => return false,
                _ = async {
                    stop.shutdown.cancelled().await;
                    tokio::time::sleep(crate::PRODUCER_FLUSH_TIMEOUT).await;
                } => {
                    tracing::warn!(group = %self.group, %topic,
                        "shutdown: the publish was not acknowledged in time; the record is left uncommitted");
                    return false;
                }
            };
            match sent {
                Ok(()) => return true,
                Err(e) if !omit_payload && is_size_error(&e) => {
                    tracing::warn!(group = %self.group, error = %e, %topic,
                        payload_bytes = msg.payload().map_or(0, <[u8]>::len),
                        "record rejected as too large; sending it without its payload");
                    omit_payload = true;
                    continue;
                }
                Err(e) => {
                    ContainerStats::add(&self.stats.infrastructure_errors, 1);
                    tracing::warn!(group = %self.group, error = %e, %topic, "publish failed; retrying");
                }
            }
            if stop.sleep(backoff.next_delay()).await {
                return false;
            }
        }
    }
}

fn traceparent<M: Message>(msg: &M) -> Option<&str> {
    msg.headers().and_then(|h| {
        h.iter().find(|h| h.key == headers::TRACEPARENT).and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok())
    })
}

/// The headers a copy keeps: the record's own; a record from a retry topic without
/// the headers its copy added (they are written afresh).
fn copy_base<M: Message>(msg: &M) -> OwnedHeaders {
    let Some(h) = msg.headers() else { return OwnedHeaders::new() };
    if !retry_topics::is_retry_copy(Some(h)) {
        return crate::envelope::copy_headers(h, 12);
    }
    let mut out = OwnedHeaders::new_with_capacity(h.count() + 12);
    for x in h.iter().filter(|x| !headers::DEAD_LETTER_PREFIXES.iter().any(|p| x.key.starts_with(p))) {
        out = out.insert(Header { key: x.key, value: x.value });
    }
    out
}

/// The dead-letter headers' facts of `msg`: where it came from (with its own
/// timestamp type), which group gave up, and why.
pub(crate) fn dead_letter_info<M: Message>(msg: &M, group: &str, failure: Failure) -> DeadLetterInfo {
    let (timestamp_ms, timestamp_type) = match TimestampType::of(msg.timestamp()) {
        Some((ms, t)) => (Some(ms), t),
        None => (None, TimestampType::CreateTime),
    };
    // A copy from a retry topic keeps the source record's place (the first hop's
    // headers), so a re-drive goes back to the source topic.
    let first = retry_topics::is_retry_copy(msg.headers())
        .then(|| msg.headers().and_then(DeadLetterInfo::from_headers))
        .flatten();
    if let Some(first) = first {
        return DeadLetterInfo {
            consumer_group: group.to_owned(),
            reason: Some(failure.reason),
            error_kind: failure.error_kind.to_owned(),
            error_message: failure.message,
            attempts: failure.attempts,
            ..first
        };
    }
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
