//! Worker health against a broker that stops: a tansu of the test's own (the shared
//! broker keeps serving the other tests) and real PostgreSQL.

use std::time::{Duration, Instant};

use reliable_kafka::{
    EnqueueOptions, Health, HealthStatus, KafkaConfig, ListenerContainer, Outbox, OutboxRelay, WorkerHealth,
};
use reliable_kafka_tests::*;

/// Waits until `probe` gives `want`; returns how long it took, or the last health.
async fn until<F: Fn() -> Health>(probe: F, want: HealthStatus, timeout: Duration) -> Result<Duration, Health> {
    let start = Instant::now();
    loop {
        let h = probe();
        if h.status == want {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(h);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_unhealthy_when_the_broker_stops_and_healthy_when_it_returns() {
    let (pool, _schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    let mut broker = OwnBroker::start();
    let kafka = test_settings(KafkaConfig::new(broker.address())).set("fetch.wait.max.ms", "10");
    let topic = unique("health");
    create_topics(&kafka, &topic, 2).await;
    let relay = OutboxRelay::builder(kafka.clone(), pool.clone())
        .poll_interval(Duration::from_millis(100))
        .max_pending_age(Duration::from_secs(5))
        .build()
        .unwrap()
        .spawn();
    let recorder = Recorder::new(&topic, &unique("health-group"), Mode::Succeed, 3);
    let container = ListenerContainer::builder(kafka.clone(), pool.clone()).handler(recorder).build().unwrap().spawn();
    let enqueue = |n: u32| {
        let pool = pool.clone();
        let topic = topic.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let to = EnqueueOptions { topic: Some(topic), ..Default::default() };
            Outbox::new().enqueue_with(&mut tx, &Work { key: format!("k{n}"), n }, to).await.unwrap();
            tx.commit().await.unwrap();
        }
    };

    // Healthy once the member has its partitions and the first event went through.
    enqueue(1).await;
    let up = Duration::from_secs(60);
    until(|| container.health(), HealthStatus::Healthy, up).await.expect("container healthy at start");
    assert!(eventually(up, || async { count(&pool, "SELECT count(*) FROM effects").await == 1 }).await);
    until(|| relay.health(), HealthStatus::Healthy, up).await.expect("relay healthy at start");
    let probes = [container.probe(), relay.probe()];
    assert_eq!(Health::worst(&probes.iter().map(|p| p.health()).collect::<Vec<_>>()), HealthStatus::Healthy);

    // The broker stops; an event committed meanwhile cannot be published.
    broker.stop();
    enqueue(2).await;
    let documented = Duration::from_secs(15);
    let took = until(|| container.health(), HealthStatus::Unhealthy, documented).await;
    let took = took.unwrap_or_else(|h| panic!("container not unhealthy within {documented:?}: {h:?}"));
    println!("container unhealthy {took:?} after the broker stopped: {:?}", container.health().reasons);
    let h = until(|| relay.health(), HealthStatus::Unhealthy, documented).await;
    h.unwrap_or_else(|h| panic!("relay not unhealthy within {documented:?}: {h:?}"));
    let reasons = relay.health().reasons.join("; ");
    assert!(reasons.contains("brokers down") || reasons.contains("oldest pending row"), "{reasons}");
    // Readiness over both workers follows the worst.
    assert_eq!(Health::worst(&probes.iter().map(|p| p.health()).collect::<Vec<_>>()), HealthStatus::Unhealthy);

    // The broker returns: the pending event goes through, both are healthy again.
    broker.resume();
    let back = Duration::from_secs(60);
    until(|| relay.health(), HealthStatus::Healthy, back).await.expect("relay healthy after the broker returned");
    until(|| container.health(), HealthStatus::Healthy, back)
        .await
        .expect("container healthy after the broker returned");
    assert!(eventually(back, || async { count(&pool, "SELECT count(*) FROM effects").await == 2 }).await);
    container.shutdown().await.unwrap();
    relay.shutdown().await.unwrap();
}

#[test]
fn a_stats_object_reports_its_own_rules() {
    // A container that has not joined yet is degraded, not unhealthy: readiness holds.
    let stats = reliable_kafka::ContainerStats::default();
    let h = stats.health("g");
    assert_eq!(h.status, HealthStatus::Degraded, "{h:?}");
    assert_eq!(h.reasons, ["not assigned partitions yet"]);
    // A relay that has claimed nothing is healthy.
    assert_eq!(reliable_kafka::RelayStats::default().health("rk_outbox").status, HealthStatus::Healthy);
}
