//! The application's observability: logs to stderr, the library's metrics in a
//! Prometheus recorder (served at `/metrics`), and spans exported through
//! OpenTelemetry: to an OTLP collector when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//! (HTTP/protobuf), and as JSON lines to a file with `--trace-out`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Latency buckets (seconds): 1 ms to 60 s.
const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Batch-size buckets (records).
const RECORDS_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];

/// What [`install`] set up; [`Telemetry::shutdown`] flushes the spans.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// The Prometheus recorder's handle (`render()` gives the exposition).
    pub metrics: PrometheusHandle,
    tracer: Option<SdkTracerProvider>,
}

/// Installs the global subscriber and metrics recorder. Spans go to OpenTelemetry
/// only when an exporter is configured (`trace_out`, or `OTEL_EXPORTER_OTLP_ENDPOINT`).
///
/// # Errors
/// When `trace_out` cannot be created, the OTLP exporter cannot be built, or a
/// recorder or subscriber is already installed.
pub fn install(trace_out: Option<&Path>) -> anyhow::Result<Telemetry> {
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), RECORDS_BUCKETS)?
        .install_recorder()?;
    reliable_kafka::telemetry::describe_metrics();
    let upkeep = metrics.clone();
    std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_secs(5));
        upkeep.run_upkeep();
    })?;

    let mut provider = None;
    let otlp = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    if trace_out.is_some() || otlp {
        let resource = opentelemetry_sdk::Resource::builder().with_service_name("concert").build();
        let mut builder = SdkTracerProvider::builder().with_resource(resource);
        if let Some(path) = trace_out {
            builder = builder.with_batch_exporter(JsonLinesExporter::create(path)?);
        }
        if otlp {
            let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
            builder = builder.with_batch_exporter(exporter);
        }
        provider = Some(builder.build());
    }
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,concert=info".into()));
    let spans = provider.as_ref().map(|p| {
        // Spans only (the library's and the API's), not every log event.
        let targets = Targets::new()
            .with_target("reliable_kafka::telemetry", LevelFilter::INFO)
            .with_target("concert::api", LevelFilter::INFO)
            .with_target("concert::recovery", LevelFilter::INFO);
        // No code location, thread or busy/idle attributes: each costs work per span or
        // per poll (R7 of BENCHMARKS.md is measured with this layer).
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("concert"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(targets)
    });
    tracing_subscriber::registry().with(logs).with(spans).try_init()?;
    Ok(Telemetry { metrics, tracer: provider })
}

impl Telemetry {
    /// Writes the Prometheus exposition to `path`.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_metrics(&self, path: &Path) -> std::io::Result<()> {
        self.metrics.run_upkeep();
        std::fs::write(path, self.metrics.render())
    }

    /// Exports every finished span and stops the exporters.
    pub fn shutdown(&self) {
        if let Some(p) = &self.tracer {
            if let Err(e) = p.shutdown() {
                tracing::warn!(error = %e, "span exporter shutdown");
            }
        }
    }
}

/// Writes finished spans as JSON lines: `trace_id`, `span_id`, `parent_span_id`
/// (empty for a root), `name`, `kind`, `start_unix_nanos`, `duration_us`, `attributes`,
/// `links` (trace ids).
#[derive(Debug, Clone)]
pub struct JsonLinesExporter {
    out: Arc<Mutex<std::io::BufWriter<std::fs::File>>>,
    path: PathBuf,
}

impl JsonLinesExporter {
    /// Creates (truncates) `path`.
    ///
    /// # Errors
    /// When the file cannot be created.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::create(path)?;
        Ok(JsonLinesExporter { out: Arc::new(Mutex::new(std::io::BufWriter::new(file))), path: path.to_owned() })
    }
}

impl SpanExporter for JsonLinesExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        for span in batch {
            let attributes: serde_json::Map<String, serde_json::Value> =
                span.attributes.iter().map(|kv| (kv.key.to_string(), kv.value.to_string().into())).collect();
            let parent = span.parent_span_id;
            let line = serde_json::json!({
                "trace_id": span.span_context.trace_id().to_string(),
                "span_id": span.span_context.span_id().to_string(),
                "parent_span_id": if parent == opentelemetry::trace::SpanId::INVALID { String::new() } else { parent.to_string() },
                "name": span.name,
                "kind": format!("{:?}", span.span_kind),
                "start_unix_nanos": span.start_time.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0),
                "duration_us": span.end_time.duration_since(span.start_time).map(|d| d.as_micros() as u64).unwrap_or(0),
                "attributes": attributes,
                "links": span.links.iter().map(|l| l.span_context.trace_id().to_string()).collect::<Vec<_>>(),
            });
            writeln!(out, "{line}").map_err(|e| {
                opentelemetry_sdk::error::OTelSdkError::InternalFailure(format!("{}: {e}", self.path.display()))
            })?;
        }
        out.flush().map_err(|e| opentelemetry_sdk::error::OTelSdkError::InternalFailure(e.to_string()))
    }
}

/// The propagation check of `--trace-out`: of the handler spans (`process <topic>`)
/// in the JSON lines at `path`, how many belong to the trace of an HTTP request span
/// of the API (kind `Server`).
///
/// # Errors
/// When the file cannot be read or a line is not JSON.
pub fn handler_spans_in_request_traces(path: &Path) -> anyhow::Result<(usize, usize)> {
    let text = std::fs::read_to_string(path)?;
    let mut requests = std::collections::HashSet::new();
    let mut handlers = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let (Some(name), Some(trace)) = (v["name"].as_str(), v["trace_id"].as_str()) else { continue };
        if v["kind"] == "Server" {
            requests.insert(trace.to_owned());
        } else if name.starts_with("process ") && !name.ends_with(" batch") {
            handlers.push(trace.to_owned());
        }
    }
    let inside = handlers.iter().filter(|t| requests.contains(*t)).count();
    Ok((handlers.len(), inside))
}

/// What the exposition `text` lacks: a documented metric with no sample, or a zero
/// where the scenario must have produced something (published, processed and
/// dead-lettered records, the latency histograms). Empty when all is there.
pub fn check_exposition(text: &str) -> Vec<String> {
    use reliable_kafka::telemetry as t;
    let samples: Vec<(&str, f64)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' ').and_then(|(name, v)| Some((name, v.parse().ok()?))))
        .collect();
    let family = |s: &str| s.split('{').next().unwrap_or(s).to_owned();
    let of = |name: &str| {
        samples
            .iter()
            .filter(move |(s, _)| {
                let f = family(s);
                f == name || f == format!("{name}_count") || f == format!("{name}_bucket") || f == format!("{name}_sum")
            })
            .copied()
            .collect::<Vec<_>>()
    };
    let mut problems = Vec::new();
    for m in t::METRICS {
        if of(m.name).is_empty() {
            problems.push(format!("{} has no sample", m.name));
        }
    }
    let nonzero = |name: &str, label: Option<&str>| {
        of(name).iter().any(|(s, v)| *v > 0.0 && label.is_none_or(|l| s.contains(l)) && !s.contains("_bucket"))
    };
    for (name, label) in [
        (t::OUTBOX_PUBLISHED, None),
        (t::CONSUMER_RECORDS, Some("outcome=\"processed\"")),
        (t::CONSUMER_RECORDS, Some("outcome=\"dead_lettered\"")),
        (t::DEAD_LETTERS, None),
        (t::RELAY_LAG, None),
        (t::HANDLER_DURATION, None),
        (t::CONSUMER_E2E_LATENCY, None),
    ] {
        if !nonzero(name, label) {
            problems.push(format!("{name}{} is zero", label.map(|l| format!("{{{l}}}")).unwrap_or_default()));
        }
    }
    problems
}
