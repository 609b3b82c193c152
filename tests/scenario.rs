//! The reference application's scenario, small, over HTTP against real PostgreSQL (and
//! MariaDB), Redis and the Kafka-protocol broker, with the demo gateway and webhook receiver
//! (real local HTTP servers) failing on purpose.
//!
//! Unlike the other tests, these use the seed documents' topic and group names, so
//! they run one at a time (`.config/nextest.toml`); each has its own database schema
//! and Redis namespace.

use std::time::Duration;

use concert::api::IDEMPOTENCY_KEY_HEADER;
use concert::app::{App, AppConfig, Flows, WorkerRole, Workers};
use concert::booking::PaymentView;
use concert::db::Db;
use concert::payment_event::PaymentCreation;
use concert::scenario::{run, Report, ScenarioConfig};
use concert::store::Store;
use reliable_kafka::EmbeddedKafka;
use reliable_kafka_tests::*;
use reqwest::StatusCode;
use serde_json::json;

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

/// Every flow with payments created by the `payment-create-group` from the use case's
/// event (seed 002), on PostgreSQL, Redis and the broker, faults injected: one payment
/// per user, each completed one notified, each failed one (insufficient balance: the
/// gateway is not called in this mode) compensated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_flows_with_payments_created_by_event_are_consistent() {
    let cfg = ScenarioConfig { payment_creation: PaymentCreation::Event, ..all_flows_with_faults() };
    let r = scenario(cfg.clone()).await;
    assert_eq!((r.users, r.payments, r.completed + r.failed), (200, 200, 200), "{r:?}");
    assert!(r.failed > 0, "a fifth of the failure rate has too few points: {r:?}");
    assert_eq!(r.notified + r.dead_lettered, r.completed, "{r:?}");
    assert_eq!((r.lost, r.duplicated, r.errors), (0, 0, 0), "{:?}", r.problems);
}

/// Seed 002, "a payment use case without the Payment domain": the use case charges the
/// points, confirms the reservation and answers `202` with no payment record written;
/// only when the relay and the consumer groups run does the `payment-create-group`
/// create the payments, and the notification, the order information and the
/// compensation of the unpaid one follow from the events it writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payment_record_is_created_by_the_consumer_group_not_the_use_case() {
    delete_topics(&kafka(), &concert::app::topics()).await;
    let (pool, schema) = isolated_pool().await;
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let store = Store::connect(&redis, Duration::from_secs(600), &schema).await.expect("redis");
    let cfg = AppConfig {
        api_addr: ([127, 0, 0, 1], 0).into(),
        payment_creation: PaymentCreation::Event,
        pipeline: false, // the relay and the consumers start later, in `Workers`
        relay_poll_interval: Duration::from_millis(50),
        ..AppConfig::default()
    };
    let db: Db = pool.clone().into();
    let app = App::start(db.clone(), store.clone(), kafka(), &cfg).await.expect("app");
    for sql in [
        "INSERT INTO concert (id, title) VALUES (1, 't')",
        "INSERT INTO concert_date (id, concert_id, starts_at, total_seat_count, available_seat_count) VALUES (1, 1, now(), 2, 2)",
        "INSERT INTO seat (concert_date_id, number, price, status) SELECT 1, k, 50000, 'AVAILABLE' FROM generate_series(1, 2) k",
        // User 2 cannot afford the seat.
        "INSERT INTO app_user (name, balance, mail) VALUES ('u1', 100000, 'u1@example.com'), ('u2', 10, 'u2@example.com')",
    ] {
        sqlx::query(sql).execute(&pool).await.expect(sql);
    }
    let (http, base) = (reqwest::Client::new(), app.api.url());
    let mut answers = Vec::new();
    for user in [1i64, 2] {
        let (reservation, key) = checkout_over_http(&http, &base, user).await;
        // Sent twice: the same answer, one payment.
        for _ in 0..2 {
            let resp = http
                .post(format!("{base}/api/payments"))
                .header(IDEMPOTENCY_KEY_HEADER, &key)
                .json(&json!({ "reservation_id": reservation, "user_id": user }))
                .send()
                .await
                .unwrap();
            answers.push((user, resp.status(), resp.json::<PaymentView>().await.unwrap()));
        }
    }
    let statuses: Vec<_> = answers.iter().map(|(u, s, p)| (*u, *s, p.status.as_str(), p.payment_id)).collect();
    assert_eq!(
        statuses,
        [
            (1, StatusCode::ACCEPTED, "ACCEPTED", None),
            (1, StatusCode::ACCEPTED, "ACCEPTED", None),
            (2, StatusCode::OK, "FAILED", None),
            (2, StatusCode::OK, "FAILED", None),
        ]
    );
    // The use case's transaction: points, reservation, seat and the event; no payment.
    assert_eq!(count(&pool, "SELECT count(*) FROM payment").await, 0, "the use case wrote no payment");
    assert_eq!(count(&pool, "SELECT CAST(balance AS BIGINT) FROM app_user WHERE id = 1").await, 50_000);
    assert_eq!(count(&pool, "SELECT count(*) FROM reservation WHERE status = 'CONFIRMED' AND user_id = 1").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM reservation WHERE status = 'FAILED' AND user_id = 2").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM rk_outbox WHERE aggregatetype = 'payment.requested'").await, 2);
    assert_eq!(count(&pool, "SELECT count(*) FROM rk_outbox WHERE aggregatetype <> 'payment.requested'").await, 0);
    // Seed 002: the token expires in Redis after the commit, in-process.
    assert_eq!(store.count_existing(&[store.token_key(1), store.hold_key(1)]).await.unwrap(), 0);

    let webhook_url = app.receiver.as_ref().map(|(_, s)| format!("{}/notify", s.url())).unwrap();
    let relay = Workers::start(db.clone(), &store, &kafka(), &cfg, WorkerRole::Relay, &webhook_url).unwrap();
    let consumers = Workers::start(db.clone(), &store, &kafka(), &cfg, WorkerRole::Consumers, &webhook_url).unwrap();
    let settled = eventually(Duration::from_secs(90), || async {
        count(&pool, "SELECT count(*) FROM notification").await == 1
            && count(&pool, "SELECT count(*) FROM payment WHERE status = 'FAILED' AND compensated_at IS NOT NULL").await
                == 1
            && count(&pool, "SELECT count(*) FROM order_info").await == 1
    })
    .await;
    consumers.stop().await.unwrap();
    relay.stop().await.unwrap();
    let gateway_calls = app.gateway.as_ref().map(|(g, _)| g.calls());
    app.stop().await.unwrap();
    assert!(settled, "the consumers did not create, notify and compensate within 90 s");
    let payments: Vec<(i64, String, bool)> =
        sqlx::query_as("SELECT user_id, status, charged FROM payment ORDER BY user_id").fetch_all(&pool).await.unwrap();
    assert_eq!(payments, [(1, "COMPLETED".to_owned(), true), (2, "FAILED".to_owned(), false)]);
    let history: Vec<String> = sqlx::query_scalar(
        "SELECT h.status FROM payment_history h JOIN payment p ON p.id = h.payment_id WHERE p.user_id = 1 ORDER BY h.id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(history, ["IN_PROGRESS", "COMPLETED"]);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM point_history h JOIN payment p ON p.id = h.payment_id WHERE h.kind = 'CHARGE' AND h.amount = -50000 AND p.user_id = 1").await,
        1,
        "the charge is booked against the payment the consumer created"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM point_history WHERE user_id = 2").await,
        0,
        "nothing charged, nothing refunded"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM seat WHERE id = 2 AND status = 'AVAILABLE'").await,
        1,
        "the unpaid seat is released"
    );
    assert_eq!(count(&pool, "SELECT CAST(available_seat_count AS BIGINT) FROM concert_date WHERE id = 1").await, 1);
    assert_eq!(gateway_calls, Some(0), "no gateway in this mode");
}
