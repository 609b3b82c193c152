//! Dead-letter headers: why a record was given up on, and how to read that back.

use rdkafka::message::{Header, Headers, OwnedHeaders};

use super::{find, find_last, headers};

/// The type of a record's timestamp (Kafka's `timestamp.type`), written to
/// [`headers::DLT_ORIGINAL_TIMESTAMP_TYPE`] with Spring Kafka's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimestampType {
    /// Set by the producer (`CreateTime`).
    CreateTime,
    /// Set by the broker when it appended the record (`LogAppendTime`).
    LogAppendTime,
}

impl TimestampType {
    /// `CreateTime` or `LogAppendTime`.
    pub fn as_str(&self) -> &'static str {
        match self {
            TimestampType::CreateTime => "CreateTime",
            TimestampType::LogAppendTime => "LogAppendTime",
        }
    }

    /// Parses [`TimestampType::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "CreateTime" => Some(TimestampType::CreateTime),
            "LogAppendTime" => Some(TimestampType::LogAppendTime),
            _ => None,
        }
    }

    /// The timestamp of an rdkafka record: its ms since the epoch and type, if any.
    pub fn of(ts: rdkafka::Timestamp) -> Option<(i64, TimestampType)> {
        match ts {
            rdkafka::Timestamp::NotAvailable => None,
            rdkafka::Timestamp::CreateTime(ms) => Some((ms, TimestampType::CreateTime)),
            rdkafka::Timestamp::LogAppendTime(ms) => Some((ms, TimestampType::LogAppendTime)),
        }
    }
}

/// Why a record went to the dead-letter topic (header [`headers::DLT_REASON`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// The handler failed transiently on every one of its attempts.
    RetriesExhausted,
    /// The handler returned [`crate::HandlerError::Permanent`].
    PermanentError,
    /// The payload could not be decoded into the event type (a poison pill).
    Deserialization,
    /// The envelope headers are missing or malformed (e.g. no message id).
    InvalidHeaders,
    /// The event type header names a type this handler does not take.
    UnknownEventType,
    /// The schema version is newer than the handler's.
    UnsupportedSchemaVersion,
}

impl DeadLetterReason {
    /// The header value, e.g. `retries-exhausted`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeadLetterReason::RetriesExhausted => "retries-exhausted",
            DeadLetterReason::PermanentError => "permanent-error",
            DeadLetterReason::Deserialization => "deserialization",
            DeadLetterReason::InvalidHeaders => "invalid-headers",
            DeadLetterReason::UnknownEventType => "unknown-event-type",
            DeadLetterReason::UnsupportedSchemaVersion => "unsupported-schema-version",
        }
    }

    /// Parses [`DeadLetterReason::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        [
            DeadLetterReason::RetriesExhausted,
            DeadLetterReason::PermanentError,
            DeadLetterReason::Deserialization,
            DeadLetterReason::InvalidHeaders,
            DeadLetterReason::UnknownEventType,
            DeadLetterReason::UnsupportedSchemaVersion,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    /// Whether a handler error caused it (as opposed to bad input).
    pub fn is_handler_failure(&self) -> bool {
        matches!(self, DeadLetterReason::RetriesExhausted | DeadLetterReason::PermanentError)
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The dead-letter headers of a record read from a dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterInfo {
    /// Topic the record was consumed from.
    pub original_topic: String,
    /// Its partition.
    pub original_partition: i32,
    /// Its offset.
    pub original_offset: i64,
    /// Its timestamp, ms since the epoch, if it had one.
    pub original_timestamp_ms: Option<i64>,
    /// The type of that timestamp (`CreateTime` when the header is absent).
    pub original_timestamp_type: TimestampType,
    /// Consumer group that dead-lettered it.
    pub consumer_group: String,
    /// Why.
    pub reason: Option<DeadLetterReason>,
    /// Rust path of the error that gave up on the record (`kafka_dlt-exception-fqcn`),
    /// e.g. `reliable_kafka::HandlerError::Permanent`.
    pub error_kind: String,
    /// Error message with its source chain.
    pub error_message: String,
    /// Delivery attempts made.
    pub attempts: u32,
}

impl DeadLetterInfo {
    /// Reads the dead-letter headers; `None` when a required one (original topic,
    /// partition, offset) is missing or malformed. When a header occurs more than once
    /// (a record dead-lettered again from a dead-letter topic), the last one counts, as
    /// in Spring Kafka.
    pub fn from_headers<H: Headers>(h: &H) -> Option<Self> {
        let get = |name: &str| find_last(Some(h), name);
        let text = |name: &str| get(name).map(|v| String::from_utf8_lossy(v).into_owned());
        let be_i64 = |name: &str| get(name).and_then(|v| <[u8; 8]>::try_from(v).ok()).map(i64::from_be_bytes);
        Some(DeadLetterInfo {
            original_topic: text(headers::DLT_ORIGINAL_TOPIC)?,
            original_partition: get(headers::DLT_ORIGINAL_PARTITION)
                .and_then(|v| <[u8; 4]>::try_from(v).ok())
                .map(i32::from_be_bytes)?,
            original_offset: be_i64(headers::DLT_ORIGINAL_OFFSET)?,
            original_timestamp_ms: be_i64(headers::DLT_ORIGINAL_TIMESTAMP),
            original_timestamp_type: text(headers::DLT_ORIGINAL_TIMESTAMP_TYPE)
                .as_deref()
                .and_then(TimestampType::parse)
                .unwrap_or(TimestampType::CreateTime),
            consumer_group: text(headers::DLT_ORIGINAL_CONSUMER_GROUP).unwrap_or_default(),
            reason: text(headers::DLT_REASON).as_deref().and_then(DeadLetterReason::parse),
            error_kind: text(headers::DLT_EXCEPTION_FQCN).unwrap_or_default(),
            error_message: text(headers::DLT_EXCEPTION_MESSAGE).unwrap_or_default(),
            attempts: text(headers::DLT_ATTEMPTS).and_then(|s| s.parse().ok()).unwrap_or(0),
        })
    }

    /// Appends these facts as dead-letter headers (Spring Kafka names and encodings)
    /// to `h`, after the record's own headers.
    pub(crate) fn append_to(&self, mut h: OwnedHeaders) -> OwnedHeaders {
        let attempts = self.attempts.to_string();
        let now = chrono::Utc::now().timestamp_millis().to_string();
        let partition = self.original_partition.to_be_bytes();
        let offset = self.original_offset.to_be_bytes();
        h = h
            .insert(Header { key: headers::DLT_ORIGINAL_TOPIC, value: Some(self.original_topic.as_bytes()) })
            .insert(Header { key: headers::DLT_ORIGINAL_PARTITION, value: Some(&partition[..]) })
            .insert(Header { key: headers::DLT_ORIGINAL_OFFSET, value: Some(&offset[..]) });
        if let Some(ts) = self.original_timestamp_ms {
            let ts = ts.to_be_bytes();
            h = h.insert(Header { key: headers::DLT_ORIGINAL_TIMESTAMP, value: Some(&ts[..]) }).insert(Header {
                key: headers::DLT_ORIGINAL_TIMESTAMP_TYPE,
                value: Some(self.original_timestamp_type.as_str().as_bytes()),
            });
        }
        if let Some(reason) = self.reason {
            h = h.insert(Header { key: headers::DLT_REASON, value: Some(reason.as_str().as_bytes()) });
        }
        h.insert(Header { key: headers::DLT_ORIGINAL_CONSUMER_GROUP, value: Some(self.consumer_group.as_bytes()) })
            .insert(Header { key: headers::DLT_EXCEPTION_FQCN, value: Some(self.error_kind.as_bytes()) })
            .insert(Header { key: headers::DLT_EXCEPTION_MESSAGE, value: Some(self.error_message.as_bytes()) })
            .insert(Header { key: headers::DLT_ATTEMPTS, value: Some(attempts.as_bytes()) })
            .insert(Header { key: headers::DLT_DEAD_LETTERED_AT, value: Some(now.as_bytes()) })
    }
}

/// The re-drive count of a record ([`headers::REDRIVE_COUNT`]); 0 when absent or
/// malformed.
pub(crate) fn redrive_count<H: Headers>(h: Option<&H>) -> u32 {
    find(h, headers::REDRIVE_COUNT).and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()).unwrap_or(0)
}

/// The headers a re-driven record carries: the record's own, without the dead-letter
/// headers and the old re-drive count, plus [`headers::REDRIVE_COUNT`] = `count`.
pub(crate) fn redrive_headers<H: Headers>(h: Option<&H>, count: u32) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(h.map_or(0, |h| h.count()) + 1);
    for x in h.into_iter().flat_map(|h| h.iter()) {
        let dead_letter = headers::DEAD_LETTER_PREFIXES.iter().any(|p| x.key.starts_with(p));
        // The relay's sequence number goes too: a consumer's watermark is past it.
        if !dead_letter && x.key != headers::REDRIVE_COUNT && x.key != headers::RELAY_SEQ {
            out = out.insert(Header { key: x.key, value: x.value });
        }
    }
    out.insert(Header { key: headers::REDRIVE_COUNT, value: Some(&count.to_string()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn headers_round_trip(
            topic in "[a-z.]{1,20}", partition in any::<i32>(), offset in any::<i64>(),
            ts in proptest::option::of(any::<i64>()), group in "[a-z-]{0,20}",
            msg in ".{0,80}", attempts in any::<u32>(), reason in 0usize..6, log_append in any::<bool>(),
        ) {
            let reasons = [
                DeadLetterReason::RetriesExhausted, DeadLetterReason::PermanentError,
                DeadLetterReason::Deserialization, DeadLetterReason::InvalidHeaders,
                DeadLetterReason::UnknownEventType, DeadLetterReason::UnsupportedSchemaVersion,
            ];
            let info = DeadLetterInfo {
                original_topic: topic, original_partition: partition, original_offset: offset,
                original_timestamp_ms: ts,
                original_timestamp_type: if log_append { TimestampType::LogAppendTime } else { TimestampType::CreateTime },
                consumer_group: group, reason: Some(reasons[reason]),
                error_kind: "k".into(), error_message: msg, attempts,
            };
            let h = info.append_to(OwnedHeaders::new());
            let mut expected = info;
            if expected.original_timestamp_ms.is_none() {
                // The type is written only with a timestamp.
                expected.original_timestamp_type = TimestampType::CreateTime;
            }
            prop_assert_eq!(DeadLetterInfo::from_headers(&h), Some(expected));
        }
    }

    #[test]
    fn redrive_headers_drop_the_dead_letter_headers_and_count_up() {
        let info = DeadLetterInfo {
            original_topic: "t".into(),
            original_partition: 1,
            original_offset: 2,
            original_timestamp_ms: Some(3),
            original_timestamp_type: TimestampType::LogAppendTime,
            consumer_group: "g".into(),
            reason: Some(DeadLetterReason::RetriesExhausted),
            error_kind: "k".into(),
            error_message: "m".into(),
            attempts: 4,
        };
        let own = OwnedHeaders::new()
            .insert(Header { key: headers::MESSAGE_ID, value: Some("id") })
            .insert(Header { key: headers::RELAY_SEQ, value: Some("5f0c/0:42") })
            .insert(Header { key: headers::REDRIVE_COUNT, value: Some("1") });
        let dead = info.append_to(own);
        assert_eq!(redrive_count(Some(&dead)), 1);
        let again = redrive_headers(Some(&dead), 2);
        let keys: Vec<&str> = again.iter().map(|h| h.key).collect();
        assert_eq!(keys, [headers::MESSAGE_ID, headers::REDRIVE_COUNT]);
        assert_eq!(redrive_count(Some(&again)), 2);
    }
}
