//! The reference application's scenario, small, over HTTP against real PostgreSQL (and
//! MariaDB), Redis and the Kafka-protocol broker, with the demo gateway and webhook receiver
//! (real local HTTP servers) failing on purpose.
//!
//! Unlike the other tests, these use the seed documents' topic and group names, so
//! they run one at a time (`.config/nextest.toml`); each has its own database schema
//! and Redis namespace.

use std::time::Duration;

use concert::app::Flows;
use concert::db::Db;
use concert::scenario::{run, Report, ScenarioConfig};
use concert::store::Store;
use reliable_kafka::EmbeddedKafka;
use reliable_kafka_tests::*;

async fn scenario(cfg: ScenarioConfig) -> Report {
    // The seed documents' topic names are fixed: start from empty topics, or records of
    // an earlier run (another database schema) would be consumed into this one.
    delete_topics(&kafka(), &concert::app::topics()).await;
    let (pool, schema) = isolated_pool().await;
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let store = Store::connect(&redis, Duration::from_secs(600), &schema).await.expect("redis");
    let report = run(pool.into(), store, kafka(), &cfg).await.expect("scenario");
    println!("{}\n{report:#?}", report.line(cfg.flows));
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_failure_scenario_is_consistent() {
    let cfg = ScenarioConfig {
        users: 120,
        failure_rate: 0.4,
        concurrency: 8,
        flows: Flows::PaymentFailure,
        progress: false,
        settle_timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let r = scenario(cfg.clone()).await;
    assert_eq!(r.payments, 120);
    assert!(r.failed > 20 && r.failed < 80, "about 40 % failed: {r:?}");
    assert_eq!((r.compensated_db, r.cleaned_redis), (r.failed, r.failed), "{r:?}");
    assert_eq!((r.lost, r.duplicated, r.errors), (0, 0, 0), "{:?}", r.problems);
    assert!(r.line(cfg.flows).starts_with("consistency: ok payments=120 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_flows_under_injected_faults_are_consistent() {
    let cfg = all_flows_with_faults();
    let r = scenario(cfg.clone()).await;
    assert_all_flows_consistent(&r, &cfg);
}

/// Every flow on MariaDB (`DATABASE_URL=mysql://…`), Redis and the broker, faults
/// injected: the application's SQL translated to MySQL's dialect, the library's MySQL
/// backend under its outbox, consumers and re-driver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_flows_on_mariadb_under_injected_faults_are_consistent() {
    delete_topics(&kafka(), &concert::app::topics()).await;
    let (pool, url) = mysql_database().await;
    let db = Db::connect(&url, 10).await.expect("MariaDB");
    assert_eq!(db.backend_name(), "mysql");
    drop(pool);
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let store = Store::connect(&redis, Duration::from_secs(600), &unique("mariadb")).await.expect("redis");
    let cfg = all_flows_with_faults();
    let r = run(db, store, kafka(), &cfg).await.expect("scenario");
    println!("{}\n{r:#?}", r.line(cfg.flows));
    assert_all_flows_consistent(&r, &cfg);
}

/// 200 users, every flow, faults injected.
fn all_flows_with_faults() -> ScenarioConfig {
    ScenarioConfig {
        users: 200,
        failure_rate: 0.3,
        concurrency: 16,
        flows: Flows::All,
        inject_faults: true,
        progress: false,
        settle_timeout: Duration::from_secs(120),
        ..Default::default()
    }
}

/// The report of a 200-user run of every flow with faults injected.
fn assert_all_flows_consistent(r: &Report, cfg: &ScenarioConfig) {
    assert_eq!((r.users, r.payments), (200, 200));
    assert!(r.failed > 20, "{r:?}");
    assert_eq!(r.coupons, 100, "stock of users / 2, all taken");
    assert_eq!(r.notified + r.dead_lettered, r.completed, "{r:?}");
    assert!(r.dead_lettered >= 1, "every 50th payment's webhook always fails: {r:?}");
    assert_eq!((r.lost, r.duplicated, r.errors), (0, 0, 0), "{:?}", r.problems);
    assert!(r.line(cfg.flows).starts_with("consistency: ok users=200 payments=200 "));
}

/// What `cargo run -p concert` does with nothing set: SQLite, the in-process mock
/// cluster and the in-process key-value store, every flow, faults injected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_flows_on_the_embedded_defaults_are_consistent() {
    init_tracing();
    let cluster = EmbeddedKafka::start(1).expect("mock cluster");
    let partitions = concert::app::AppConfig::default().partitions;
    let topics = concert::app::topics();
    cluster.create_topics(&topics.iter().map(|t| (t.as_str(), partitions)).collect::<Vec<_>>()).unwrap();
    let path = std::env::temp_dir().join(format!("concert-test-{}.db", uuid::Uuid::new_v4().simple()));
    let db = Db::connect(&format!("sqlite://{}", path.display()), 8).await.expect("SQLite");
    assert_eq!(db.backend_name(), "sqlite");
    let store = Store::in_memory(Duration::from_secs(600), "test");
    let cfg = ScenarioConfig { progress: false, create_topics: false, ..ScenarioConfig::demo() };
    let r = run(db, store, cluster.config(), &cfg).await.expect("scenario");
    println!("{}\n{r:#?}", r.line(cfg.flows));
    assert_all_flows_consistent(&r, &cfg);
    drop(cluster);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
