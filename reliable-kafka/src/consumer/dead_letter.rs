//! Dead-letter records: why a record was given up on, and how to read that back.

use rdkafka::message::{Header, Headers, OwnedHeaders};

use crate::headers;

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
    /// Consumer group that dead-lettered it.
    pub consumer_group: String,
    /// Why.
    pub reason: Option<DeadLetterReason>,
    /// Error kind (`kafka_dlt-exception-fqcn`).
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
        let get = |name: &str| h.iter().filter(|x| x.key == name).last().and_then(|x| x.value);
        let text = |name: &str| get(name).map(|v| String::from_utf8_lossy(v).into_owned());
        let be_i64 = |name: &str| get(name).and_then(|v| <[u8; 8]>::try_from(v).ok()).map(i64::from_be_bytes);
        Some(DeadLetterInfo {
            original_topic: text(headers::DLT_ORIGINAL_TOPIC)?,
            original_partition: get(headers::DLT_ORIGINAL_PARTITION)
                .and_then(|v| <[u8; 4]>::try_from(v).ok())
                .map(i32::from_be_bytes)?,
            original_offset: be_i64(headers::DLT_ORIGINAL_OFFSET)?,
            original_timestamp_ms: be_i64(headers::DLT_ORIGINAL_TIMESTAMP),
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
            h = h
                .insert(Header { key: headers::DLT_ORIGINAL_TIMESTAMP, value: Some(&ts[..]) })
                .insert(Header { key: headers::DLT_ORIGINAL_TIMESTAMP_TYPE, value: Some("CreateTime".as_bytes()) });
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn headers_round_trip(
            topic in "[a-z.]{1,20}", partition in any::<i32>(), offset in any::<i64>(),
            ts in proptest::option::of(any::<i64>()), group in "[a-z-]{0,20}",
            msg in ".{0,80}", attempts in any::<u32>(), reason in 0usize..6,
        ) {
            let reasons = [
                DeadLetterReason::RetriesExhausted, DeadLetterReason::PermanentError,
                DeadLetterReason::Deserialization, DeadLetterReason::InvalidHeaders,
                DeadLetterReason::UnknownEventType, DeadLetterReason::UnsupportedSchemaVersion,
            ];
            let info = DeadLetterInfo {
                original_topic: topic, original_partition: partition, original_offset: offset,
                original_timestamp_ms: ts, consumer_group: group, reason: Some(reasons[reason]),
                error_kind: "k".into(), error_message: msg, attempts,
            };
            let h = info.append_to(OwnedHeaders::new());
            prop_assert_eq!(DeadLetterInfo::from_headers(&h), Some(info));
        }
    }
}
