//! The reference application's payment-failure scenario, small, against real
//! PostgreSQL, Redis and the Kafka-protocol broker.

use std::time::Duration;

use concert::scenario::{run, ScenarioConfig};
use concert::store::RedisStore;
use reliable_kafka_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_failure_scenario_is_consistent() {
    let (pool, _schema) = isolated_pool().await;
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let store = RedisStore::connect(&redis, Duration::from_secs(600))
        .await
        .expect("redis");
    let cfg = ScenarioConfig {
        users: 120,
        failure_rate: 0.4,
        concurrency: 8,
        settle_timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let report = run(pool, store, kafka(), &cfg).await.expect("scenario");
    println!("{}", report.line());
    assert_eq!(report.payments, 120);
    assert!(
        report.failed > 20 && report.failed < 80,
        "about 40 % failed: {report:?}"
    );
    assert_eq!(report.compensated_db, report.failed, "{report:?}");
    assert_eq!(report.cleaned_redis, report.failed, "{report:?}");
    assert_eq!(
        (report.lost, report.duplicated, report.errors),
        (0, 0, 0),
        "{report:?}"
    );
    assert!(report.line().starts_with("consistency: ok "));
}
