//! Observability: the standard metric set (through the [`metrics`](https://docs.rs/metrics)
//! facade) and `tracing` spans that follow OpenTelemetry's messaging semantic
//! conventions.
//!
//! **Metrics.** The library records through the `metrics` facade and installs no
//! recorder: a service installs one (`metrics-exporter-prometheus`, an OpenTelemetry
//! bridge, ...) and every worker's figures appear there. Without a recorder, a
//! recording costs one relaxed atomic load. [`METRICS`] lists every metric with its
//! type, labels and unit; [`describe_metrics`] registers their descriptions. Names
//! follow Prometheus' conventions (`_total` for counters, base units `_seconds`).
//!
//! **Traces.** Spans are `tracing` spans named and attributed as OpenTelemetry's
//! messaging conventions say (`messaging.system = "kafka"`,
//! `messaging.destination.name`, `messaging.consumer.group.name`,
//! `messaging.destination.partition.id`, `messaging.kafka.offset`,
//! `messaging.message.id`, `messaging.operation.type`, `otel.kind`); see
//! [`SPANS`]. With the `opentelemetry` feature and a `tracing-opentelemetry` layer
//! installed, `Outbox::enqueue` writes the current span's W3C trace context into the
//! outbox row (`traceparent`, `tracestate` headers), and the consumer's spans continue
//! that trace, through dead letters and re-drives (which keep the headers).

mod names;
pub(crate) mod propagation;
pub(crate) mod record;
pub(crate) mod spans;

pub use names::*;
pub use propagation::{current_trace_headers, set_parent_from_headers};
