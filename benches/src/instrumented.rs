//! R7's instrumentation: the library's metrics into an in-memory Prometheus recorder
//! and its spans through `tracing-opentelemetry` into an in-memory exporter, set as the
//! thread defaults of a runtime of its own, so one process can measure the same
//! consumer with and without them, alternating.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

/// Keeps the finished spans in memory (their count, and the last batch).
#[derive(Debug, Clone, Default)]
struct MemoryExporter {
    spans: Arc<AtomicU64>,
    last: Arc<std::sync::Mutex<Vec<SpanData>>>,
}

impl SpanExporter for MemoryExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.spans.fetch_add(batch.len() as u64, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = batch;
        Ok(())
    }
}

/// A metrics recorder and a span pipeline, both in memory.
pub struct Instrumentation {
    dispatch: tracing::Dispatch,
    recorder: &'static PrometheusRecorder,
    provider: SdkTracerProvider,
    exporter: MemoryExporter,
}

impl Default for Instrumentation {
    fn default() -> Self {
        Self::new()
    }
}

impl Instrumentation {
    /// The recorder and the span pipeline (batch span processor, sampling everything).
    pub fn new() -> Self {
        let exporter = MemoryExporter::default();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter.clone()).build();
        // As a service would run it: the library at INFO (its spans), the rest at WARN
        // (not sqlx's per-query events).
        let targets = Targets::new().with_target("reliable_kafka", LevelFilter::INFO).with_default(LevelFilter::WARN);
        let subscriber = tracing_subscriber::registry()
            .with(crate::instrumented::otel_layer(provider.tracer("r7")).with_filter(targets));
        let recorder: &'static PrometheusRecorder = Box::leak(Box::new(PrometheusBuilder::new().build_recorder()));
        Instrumentation { dispatch: tracing::Dispatch::new(subscriber), recorder, provider, exporter }
    }

    /// A two-worker runtime; with `on`, each of its threads records metrics and spans.
    ///
    /// # Panics
    /// When the runtime cannot be built.
    pub fn runtime(&self, on: bool) -> tokio::runtime::Runtime {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2).enable_all();
        if on {
            let (dispatch, recorder) = (self.dispatch.clone(), self.recorder);
            // RK_R7=metrics or RK_R7=tracing turns on only one of them (to see which costs).
            let which = std::env::var("RK_R7").unwrap_or_default();
            b.on_thread_start(move || {
                // For the thread's life.
                if which != "metrics" {
                    std::mem::forget(tracing::dispatcher::set_default(&dispatch));
                }
                if which != "tracing" {
                    std::mem::forget(metrics::set_default_local_recorder(recorder));
                }
            });
        }
        b.build().expect("runtime")
    }

    /// Spans exported so far (after a flush), and the size of the metrics exposition
    /// (bytes): proof that both recorded.
    pub fn recorded(&self) -> (u64, usize) {
        let _ = self.provider.force_flush();
        (self.exporter.spans.load(Ordering::Relaxed), self.recorder.handle().render().len())
    }
}

/// The `tracing-opentelemetry` layer as the reference app configures it: no code
/// location or thread attributes and no busy/idle time per span (each costs a lookup
/// or a clock read per poll of an instrumented future).
pub fn otel_layer<S>(
    tracer: opentelemetry_sdk::trace::Tracer,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
}
