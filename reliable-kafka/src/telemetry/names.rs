//! The metric set: names, types, labels and units, and their descriptions.

/// The type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricKind {
    /// Monotonic count (Prometheus `counter`).
    Counter,
    /// Value that goes up and down (Prometheus `gauge`).
    Gauge,
    /// Distribution (Prometheus `histogram` or `summary`, as the recorder renders it).
    Histogram,
}

/// One metric of the standard set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricSpec {
    /// Name, e.g. `rk_outbox_published_total`.
    pub name: &'static str,
    /// Type.
    pub kind: MetricKind,
    /// Label names, e.g. `["topic"]`.
    pub labels: &'static [&'static str],
    /// Unit: `records`, `seconds`, `partitions` or `state` (an enumeration's code).
    pub unit: &'static str,
    /// What it measures.
    pub help: &'static str,
}

macro_rules! metric_set {
    ($( $(#[$doc:meta])* $konst:ident = $name:literal, $kind:ident, [$($label:literal),*], $unit:literal, $help:literal; )*) => {
        $( $(#[$doc])* #[doc = concat!("`", $name, "`: ", $help)] pub const $konst: &str = $name; )*
        /// Every metric the library records, in the README's order.
        pub const METRICS: &[MetricSpec] = &[
            $( MetricSpec { name: $name, kind: MetricKind::$kind, labels: &[$($label),*], unit: $unit, help: $help }, )*
        ];
    };
}

metric_set! {
    OUTBOX_ENQUEUED = "rk_outbox_enqueued_total", Counter, ["topic"], "records",
        "Outbox rows written by `enqueue` (counted when the call returns; a rolled-back transaction still counts).";
    OUTBOX_PUBLISHED = "rk_outbox_published_total", Counter, ["topic"], "records",
        "Outbox rows the relay published and the broker acknowledged.";
    RELAY_BATCH_SIZE = "rk_relay_batch_size", Histogram, [], "records",
        "Rows claimed per relay batch.";
    RELAY_LAG = "rk_relay_lag_seconds", Histogram, ["topic"], "seconds",
        "From the row's commit (its `created_at`) to the broker's acknowledgement.";
    OUTBOX_PENDING = "rk_outbox_pending", Gauge, [], "records",
        "Rows committed and not yet published (read every `METRICS_INTERVAL`).";
    OUTBOX_OLDEST_PENDING_AGE = "rk_outbox_oldest_pending_age_seconds", Gauge, [], "seconds",
        "Age of the oldest pending row; 0 when none is pending.";
    OUTBOX_PARKED = "rk_outbox_parked", Gauge, [], "records",
        "Rows the relay gave up on after `max_send_attempts` rejections.";
    RELAY_SEND_ERRORS = "rk_relay_send_errors_total", Counter, ["class"], "records",
        "Rows the broker did not acknowledge, by class: `transient` (retried) or `permanent`.";
    CONSUMER_RECORDS = "rk_consumer_records_total", Counter, ["group", "topic", "outcome"], "records",
        "Records by outcome: `processed`, `duplicate`, `retried` (one per retry), `dead_lettered`, `skipped`, `deferred` (into the key-blocking table).";
    HANDLER_DURATION = "rk_handler_duration_seconds", Histogram, ["group", "topic"], "seconds",
        "One handler call: one record's attempt, or one run of a batch.";
    CONSUMER_BATCH_SIZE = "rk_consumer_batch_size", Histogram, ["group"], "records",
        "Records per batch handed to the pipeline.";
    CONSUMER_E2E_LATENCY = "rk_consumer_e2e_latency_seconds", Histogram, ["group", "topic"], "seconds",
        "From the envelope's produced-at (the outbox commit) to the handler's commit.";
    CONSUMER_LAG = "rk_consumer_lag", Gauge, ["group", "topic", "partition"], "records",
        "Consumer lag per assigned partition, from librdkafka's statistics (every second).";
    CONSUMER_PAUSED_PARTITIONS = "rk_consumer_paused_partitions", Gauge, ["group"], "partitions",
        "Partitions the container holds paused: a record waiting for its next attempt, for its retry topic's due time, or for an open circuit breaker.";
    CONSUMER_CIRCUIT_STATE = "rk_consumer_circuit_state", Gauge, ["group", "handler"], "state",
        "A handler's circuit breaker: 0 closed, 1 half-open, 2 open (handler: its event type).";
    DEAD_LETTERS = "rk_dead_letters_total", Counter, ["group", "topic", "reason"], "records",
        "Records published to a dead-letter topic, by original topic and reason (`rk-dlt-reason`).";
    REDRIVEN = "rk_redriven_total", Counter, ["topic"], "records",
        "Dead letters re-driven to their original topic.";
    PARKED = "rk_parked_total", Counter, ["topic"], "records",
        "Dead letters parked after their last re-drive (by dead-letter topic).";
}

/// How often the relay reads the outbox counts for the gauges (5 s).
pub const METRICS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Registers the descriptions and units of [`METRICS`] with the installed recorder.
/// Call it once after installing the recorder; recording works without it (the
/// exposition then lacks `# HELP` lines).
pub fn describe_metrics() {
    for m in METRICS {
        let unit = match m.unit {
            "seconds" => Some(metrics::Unit::Seconds),
            "records" | "partitions" => Some(metrics::Unit::Count),
            _ => None,
        };
        let help = m.help;
        match (m.kind, unit) {
            (MetricKind::Counter, Some(u)) => metrics::describe_counter!(m.name, u, help),
            (MetricKind::Counter, None) => metrics::describe_counter!(m.name, help),
            (MetricKind::Gauge, Some(u)) => metrics::describe_gauge!(m.name, u, help),
            (MetricKind::Gauge, None) => metrics::describe_gauge!(m.name, help),
            (MetricKind::Histogram, Some(u)) => metrics::describe_histogram!(m.name, u, help),
            (MetricKind::Histogram, None) => metrics::describe_histogram!(m.name, help),
        }
    }
}

/// The span names the library opens (OpenTelemetry: `{operation} {destination}`).
///
/// | span | when | kind | parent |
/// |---|---|---|---|
/// | `send outbox` | one relay batch | producer | none (links to each row's trace with `opentelemetry`) |
/// | `process {topic}` | one record's handler call (each attempt), or each record of a batch run by the default `handle_batch` | consumer | the record's `traceparent` |
/// | `process {topic} batch` | one batch of records in one transaction | consumer | none (links) |
/// | `dead_letter {topic}` | publishing one record to its dead-letter topic | producer | the record's `traceparent` |
/// | `redrive {topic}` | one re-drive run | consumer | none |
pub const SPANS: &[&str] =
    &["send outbox", "process {topic}", "process {topic} batch", "dead_letter {topic}", "redrive {topic}"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_follow_prometheus_conventions() {
        let mut seen = std::collections::HashSet::new();
        for m in METRICS {
            assert!(seen.insert(m.name), "{} twice", m.name);
            assert!(m.name.starts_with("rk_"), "{}", m.name);
            assert_eq!(m.kind == MetricKind::Counter, m.name.ends_with("_total"), "{}", m.name);
            assert_eq!(m.unit == "seconds", m.name.ends_with("_seconds"), "{}", m.name);
        }
    }
}
