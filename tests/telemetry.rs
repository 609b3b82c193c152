//! The standard metrics and the trace context, end to end on real PostgreSQL and the
//! broker: an HTTP-like request span enqueues three events (one succeeds, one fails
//! once then succeeds, one is a poison pill); the relay publishes them, the container
//! handles them. The handler and dead-letter spans must continue the request's trace,
//! the dead letter must keep its `traceparent`, and the Prometheus exposition must count
//! each outcome.
//!
//! One test per binary: it installs the process's global recorder and subscriber.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use reliable_kafka::telemetry as t;
use reliable_kafka::{
    headers, EventHandler, FixedBackOff, HandlerContext, HandlerError, HandlerOptions, ListenerContainer, Outbox,
    OutboxRelay,
};
use reliable_kafka_tests::*;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

struct Handler {
    topic: String,
    group: String,
    failed_once: Mutex<HashSet<String>>,
}

impl EventHandler for Handler {
    type Event = Work;
    fn options(&self) -> HandlerOptions {
        HandlerOptions::new()
            .topic(self.topic.clone())
            .group(self.group.clone())
            .backoff(FixedBackOff::new(Duration::from_millis(20), 3).unwrap())
    }
    fn handle<'a>(&'a self, event: Work, _ctx: &'a mut HandlerContext) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            match event.key.as_str() {
                "poison" => Err(HandlerError::permanent("poison pill")),
                "flaky" if self.failed_once.lock().unwrap().insert(event.key.clone()) => {
                    Err(HandlerError::transient("first attempt fails"))
                }
                _ => Ok(()),
            }
        })
    }
}

/// The value of the sample `name{…}` whose labels include every one of `labels`.
fn sample(exposition: &str, name: &str, labels: &[&str]) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .find_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_enqueuing_trace_and_metrics_count_every_outcome() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .try_init()
        .unwrap();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().unwrap();
    t::describe_metrics();

    let (pool, _schema) = isolated_pool().await;
    let kafka = kafka();
    let topic = unique("telemetry");
    create_topics(&kafka, &topic, 1).await;
    let group = unique("group");

    // The "request": its span is current while the events are enqueued.
    let request = tracing::info_span!("request", "otel.kind" = "server");
    let outbox = Outbox::new();
    {
        use tracing::Instrument;
        async {
            let mut tx = pool.begin().await.unwrap();
            for (n, key) in ["fine", "flaky", "poison"].into_iter().enumerate() {
                let opts = reliable_kafka::EnqueueOptions { topic: Some(topic.clone()), ..Default::default() };
                outbox.enqueue_with(&mut *tx, &Work { key: key.into(), n: n as u32 }, opts).await.unwrap();
            }
            tx.commit().await.unwrap();
        }
        .instrument(request.clone())
        .await;
    }
    let request_trace = {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        request.context().span().span_context().trace_id()
    };
    drop(request);
    let headers_json: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT headers FROM rk_outbox ORDER BY created_at").fetch_all(&pool).await.unwrap();
    assert_eq!(headers_json.len(), 3);
    for h in &headers_json {
        let tp = h[headers::TRACEPARENT].as_str().expect("traceparent written at enqueue");
        assert_eq!(tp.split('-').nth(1), Some(request_trace.to_string().as_str()), "{tp}");
    }

    let relay = OutboxRelay::builder(kafka.clone(), pool.clone()).build().unwrap().spawn();
    let handler = Handler { topic: topic.clone(), group: group.clone(), failed_once: Mutex::default() };
    let c = ListenerContainer::builder(kafka.clone(), pool.clone()).handler(handler).build().unwrap().spawn();
    let stats = c.shared_stats();
    assert!(
        eventually(Duration::from_secs(60), || async { stats.processed() == 2 && stats.dead_lettered() == 1 }).await,
        "processed {} dead-lettered {}",
        stats.processed(),
        stats.dead_lettered()
    );
    let dlq = read_topic(&kafka, &format!("{topic}.DLQ"), 1, Duration::from_secs(30), Duration::ZERO).await;
    c.shutdown().await.unwrap();
    relay.shutdown().await.unwrap();

    // The dead letter keeps the trace context.
    assert_eq!(dlq.len(), 1);
    let tp = header(&dlq[0], headers::TRACEPARENT).expect("dead letter keeps traceparent");
    assert_eq!(tp.split('-').nth(1), Some(request_trace.to_string().as_str()));

    // Every handler attempt and the dead-letter publish are in the request's trace.
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let handler_spans: Vec<_> = spans.iter().filter(|s| s.name == format!("process {topic}")).collect();
    // fine 1, flaky 2 (a failure and a success), poison 1; more if a batch ran first.
    assert!(handler_spans.len() >= 4, "{:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>());
    for s in &handler_spans {
        assert_eq!(s.span_context.trace_id(), request_trace, "{}", s.name);
        let attr = |k: &str| s.attributes.iter().find(|kv| kv.key.as_str() == k).map(|kv| kv.value.to_string());
        assert_eq!(attr("messaging.system").as_deref(), Some("kafka"));
        assert_eq!(attr("messaging.consumer.group.name"), Some(group.clone()));
        assert_eq!(attr("messaging.destination.name"), Some(topic.clone()));
        assert!(attr("messaging.message.id").is_some() && attr("messaging.kafka.offset").is_some());
    }
    let dead_letter = spans.iter().find(|s| s.name == format!("dead_letter {topic}")).expect("dead-letter span");
    assert_eq!(dead_letter.span_context.trace_id(), request_trace);
    assert!(spans.iter().any(|s| s.name == "send outbox"), "relay batch span");

    // The metrics count each outcome.
    let text = metrics.render();
    let topic_label = format!("topic=\"{topic}\"");
    let group_label = format!("group=\"{group}\"");
    let of = |name: &str, extra: &[&str]| {
        let mut labels = vec![topic_label.as_str()];
        labels.extend_from_slice(extra);
        sample(&text, name, &labels).unwrap_or_else(|| panic!("{name} {labels:?} not in:\n{text}"))
    };
    assert_eq!(of(t::OUTBOX_ENQUEUED, &[]), 3.0);
    assert_eq!(of(t::OUTBOX_PUBLISHED, &[]), 3.0);
    assert_eq!(of(t::CONSUMER_RECORDS, &[&group_label, "outcome=\"processed\""]), 2.0);
    assert_eq!(of(t::CONSUMER_RECORDS, &[&group_label, "outcome=\"dead_lettered\""]), 1.0);
    assert!(of(t::CONSUMER_RECORDS, &[&group_label, "outcome=\"retried\""]) >= 1.0);
    assert_eq!(of(t::DEAD_LETTERS, &[&group_label, "reason=\"permanent-error\""]), 1.0);
    assert_eq!(of(&format!("{}_count", t::CONSUMER_E2E_LATENCY), &[&group_label]), 2.0);
    assert!(of(&format!("{}_count", t::HANDLER_DURATION), &[&group_label]) >= 4.0);
    assert_eq!(of(&format!("{}_count", t::RELAY_LAG), &[]), 3.0);
    assert!(text.contains(&format!("# HELP {}", t::OUTBOX_PUBLISHED)), "described");
}
