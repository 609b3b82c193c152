//! Record header names, in one place.
//!
//! Envelope headers (`rk-*`) are written by the outbox relay on every record and read by
//! the listener container ([`crate::Envelope`]). Dead-letter headers use Spring Kafka's `kafka_dlt-*` names and
//! encodings (see `org.springframework.kafka.support.KafkaHeaders`), so tools written for
//! Spring Kafka dead-letter topics read ours; the few facts Spring has no header for use
//! the `rk-dlt-*` prefix.

/// Message id: a UUID (version 7) in its hyphenated text form. The idempotent
/// consumer deduplicates on it.
pub const MESSAGE_ID: &str = "rk-message-id";
/// Event type name, e.g. `PaymentFailed` (UTF-8).
pub const EVENT_TYPE: &str = "rk-event-type";
/// Schema version of the payload, a decimal `u32` in ASCII.
pub const SCHEMA_VERSION: &str = "rk-schema-version";
/// Time the event was written to the outbox: milliseconds since the Unix epoch,
/// decimal ASCII.
pub const PRODUCED_AT: &str = "rk-produced-at";
/// Media type of the payload, e.g. `application/json`.
pub const CONTENT_TYPE: &str = "content-type";
/// W3C Trace Context `traceparent`, copied from the outbox row when present.
pub const TRACEPARENT: &str = "traceparent";
/// W3C Trace Context `tracestate`, copied from the outbox row when present.
pub const TRACESTATE: &str = "tracestate";

/// CloudEvents `specversion` (Kafka protocol binding, binary content mode: each
/// context attribute is a header `ce_<name>`, the data is the record value, its media
/// type is [`CONTENT_TYPE`]). This crate writes and reads [`CE_SPEC_VERSION`].
pub const CE_SPECVERSION: &str = "ce_specversion";
/// The CloudEvents version written and read: `1.0`.
pub const CE_SPEC_VERSION: &str = "1.0";
/// CloudEvents `id`: unique within its `source`. The relay writes the outbox row id.
pub const CE_ID: &str = "ce_id";
/// CloudEvents `source`: a URI reference naming the producer.
pub const CE_SOURCE: &str = "ce_source";
/// CloudEvents `type`, e.g. `com.example.order.placed`. The relay writes the event type.
pub const CE_TYPE: &str = "ce_type";
/// CloudEvents `time`, RFC 3339. The relay writes the outbox insert time.
pub const CE_TIME: &str = "ce_time";
/// Header in which Debezium's outbox event router places the event id (its
/// `table.field.event.id` column, `id` by default).
pub const DEBEZIUM_ID: &str = "id";
/// Header of the event type in Debezium's documented outbox router setup
/// (`table.fields.additional.placement=type:header:eventType`).
pub const DEBEZIUM_EVENT_TYPE: &str = "eventType";

/// Original topic (UTF-8). Spring Kafka `KafkaHeaders.DLT_ORIGINAL_TOPIC`.
pub const DLT_ORIGINAL_TOPIC: &str = "kafka_dlt-original-topic";
/// Original partition: 4-byte big-endian `i32`, as Spring Kafka writes it.
pub const DLT_ORIGINAL_PARTITION: &str = "kafka_dlt-original-partition";
/// Original offset: 8-byte big-endian `i64`, as Spring Kafka writes it.
pub const DLT_ORIGINAL_OFFSET: &str = "kafka_dlt-original-offset";
/// Original record timestamp, ms since the epoch: 8-byte big-endian `i64`.
pub const DLT_ORIGINAL_TIMESTAMP: &str = "kafka_dlt-original-timestamp";
/// Original timestamp type, `CreateTime` or `LogAppendTime` (UTF-8): the record's own
/// type, as Spring Kafka writes it ([`crate::TimestampType`]).
pub const DLT_ORIGINAL_TIMESTAMP_TYPE: &str = "kafka_dlt-original-timestamp-type";
/// Consumer group that gave up on the record (UTF-8).
pub const DLT_ORIGINAL_CONSUMER_GROUP: &str = "kafka_dlt-original-consumer-group";
/// Error class. Spring writes the Java exception class; we write the Rust path of the
/// error variant that gave up on the record, e.g. `reliable_kafka::HandlerError::Transient`
/// or `reliable_kafka::EnvelopeError` (UTF-8); every path written names a public item.
pub const DLT_EXCEPTION_FQCN: &str = "kafka_dlt-exception-fqcn";
/// Error message with its whole source chain, `": "`-separated (UTF-8).
pub const DLT_EXCEPTION_MESSAGE: &str = "kafka_dlt-exception-message";
/// Why the record was dead-lettered, one of [`crate::DeadLetterReason`]'s names, e.g.
/// `retries-exhausted` (UTF-8).
pub const DLT_REASON: &str = "rk-dlt-reason";
/// Number of delivery attempts made before dead-lettering, decimal ASCII.
pub const DLT_ATTEMPTS: &str = "rk-dlt-attempts";
/// Time of dead-lettering, ms since the epoch, decimal ASCII.
pub const DLT_DEAD_LETTERED_AT: &str = "rk-dlt-dead-lettered-at";
/// Set, to the original payload's size in bytes (decimal), when the dead-letter record
/// carries no payload because the original one was too large for the dead-letter
/// producer (`message.max.bytes`). The payload stays readable at the original topic,
/// partition and offset until the topic's retention; the re-driver parks such records.
pub const DLT_PAYLOAD_OMITTED: &str = "rk-dlt-payload-omitted";
/// How often a record was re-driven from a dead-letter topic, decimal ASCII. Written by
/// the re-driver and carried through the next dead-lettering, so the bound
/// (`max_redrives`) holds across cycles.
pub const REDRIVE_COUNT: &str = "rk-redrive-count";
/// The relay's sequence number of the record, `<source>:<n>` (ASCII): `<source>` names
/// the outbox table and shard that numbered it (`<uuid>/<shard>`), `<n>` is a decimal
/// that grows with each row the shard numbers. Written by a relay with
/// `OutboxRelayBuilder::sequence_numbers`; read by consumers in watermark mode
/// (`ListenerContainerBuilder::watermark_dedup`). Re-drive, retry topics and the replay
/// of parked records drop it, so that a watermark never swallows a copy sent again on
/// purpose.
pub const RELAY_SEQ: &str = "rk-relay-seq";

/// Retry topics (Spring Kafka's name): the attempt a record in a retry topic is for,
/// a 4-byte big-endian integer (2 in the first retry topic).
pub const RETRY_TOPIC_ATTEMPTS: &str = "retry_topic-attempts";
/// Retry topics (Spring Kafka's name): when the record is due, ms since the epoch, an
/// 8-byte big-endian integer.
pub const RETRY_TOPIC_BACKOFF_TIMESTAMP: &str = "retry_topic-backoff-timestamp";
/// Retry topics (Spring Kafka's name): the source record's timestamp, ms since the
/// epoch, an 8-byte big-endian integer.
pub const RETRY_TOPIC_ORIGINAL_TIMESTAMP: &str = "retry_topic-original-timestamp";

/// Prefixes of the headers a dead-lettering or a retry topic adds
/// ([`DLT_ORIGINAL_TOPIC`], [`RETRY_TOPIC_ATTEMPTS`] and the rest): the re-driver
/// removes them before it re-publishes a record.
pub const DEAD_LETTER_PREFIXES: [&str; 3] = ["kafka_dlt-", "rk-dlt-", "retry_topic-"];
