//! The library's spans, named and attributed by OpenTelemetry's messaging semantic
//! conventions (see [`super::SPANS`]). Field values are computed only when a
//! subscriber enables the span.

use tracing::Span;

use crate::RecordInfo;

/// One handler call for one record (an attempt, or a record of a batch run by the
/// default `handle_batch`), child of the record's trace.
pub(crate) fn process(info: &RecordInfo, group: &str, attempt: u32) -> Span {
    let span = tracing::info_span!(
        "process",
        "otel.name" = %format_args!("process {}", info.topic),
        "otel.kind" = "consumer",
        "messaging.system" = "kafka",
        "messaging.operation.type" = "process",
        "messaging.destination.name" = %info.topic,
        "messaging.consumer.group.name" = group,
        "messaging.destination.partition.id" = %info.partition,
        "messaging.kafka.offset" = info.offset,
        "messaging.message.id" = %info.message_id,
        "rk.event_type" = %info.event_type,
        "rk.attempt" = attempt,
    );
    if !span.is_disabled() {
        super::set_parent_from_headers(&span, info.traceparent.as_deref(), None);
    }
    span
}

/// One batch of records of one partition, processed in one transaction; linked to the
/// records' traces.
pub(crate) fn process_batch<'a>(
    topic: &str,
    partition: i32,
    group: &str,
    records: usize,
    traceparents: impl Iterator<Item = Option<&'a str>>,
) -> Span {
    let span = tracing::info_span!(
        "process_batch",
        "otel.name" = %format_args!("process {topic} batch"),
        "otel.kind" = "consumer",
        "messaging.system" = "kafka",
        "messaging.operation.type" = "process",
        "messaging.destination.name" = topic,
        "messaging.consumer.group.name" = group,
        "messaging.destination.partition.id" = %partition,
        "messaging.batch.message_count" = records,
    );
    if !span.is_disabled() {
        traceparents.for_each(|tp| super::propagation::add_link(&span, tp));
    }
    span
}

/// One relay batch: claim, send, await the acknowledgements, mark.
pub(crate) fn relay_batch(table: &str) -> Span {
    tracing::info_span!(
        "send",
        "otel.name" = "send outbox",
        "otel.kind" = "producer",
        "messaging.system" = "kafka",
        "messaging.operation.type" = "send",
        "rk.outbox_table" = table,
        "messaging.batch.message_count" = tracing::field::Empty,
    )
}

/// Publishing one record to its dead-letter topic, child of the record's trace.
pub(crate) fn dead_letter(info: &crate::DeadLetterInfo, dead_letter_topic: &str, traceparent: Option<&str>) -> Span {
    let span = tracing::info_span!(
        "dead_letter",
        "otel.name" = %format_args!("dead_letter {}", info.original_topic),
        "otel.kind" = "producer",
        "messaging.system" = "kafka",
        "messaging.operation.type" = "send",
        "messaging.destination.name" = dead_letter_topic,
        "messaging.consumer.group.name" = %info.consumer_group,
        "messaging.destination.partition.id" = %info.original_partition,
        "messaging.kafka.offset" = info.original_offset,
        "rk.dlt.reason" = info.reason.map(|r| r.as_str()).unwrap_or("-"),
    );
    if !span.is_disabled() {
        super::set_parent_from_headers(&span, traceparent, None);
    }
    span
}

/// One re-drive run over a dead-letter topic.
pub(crate) fn redrive(dead_letter_topic: &str, group: &str) -> Span {
    tracing::info_span!(
        "redrive",
        "otel.name" = %format_args!("redrive {dead_letter_topic}"),
        "otel.kind" = "consumer",
        "messaging.system" = "kafka",
        "messaging.operation.type" = "receive",
        "messaging.destination.name" = dead_letter_topic,
        "messaging.consumer.group.name" = group,
    )
}
