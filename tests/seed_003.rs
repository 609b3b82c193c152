//! Seed 003's scenarios and tests, one test each, on the reference application's
//! notification sender ([`WebhookNotifier`]), its demo webhook receiver and the
//! dead-letter re-driver, against real PostgreSQL, the broker and local HTTP servers:
//! a failing receiver (scenario 1: `503`) and a timeout (scenario 2: the seed's 30 s)
//! end in `payment-notification.DLQ`; a re-drive delivers once the receiver is back;
//! re-drives exhausted park the record (see also `concert.rs`); 1,000 notifications are
//! each delivered or parked, none twice.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use concert::events::PaymentCompleted;
use concert::http::Server;
use concert::webhook::{DemoReceiver, ReceiverBehaviour, WebhookNotifier};
use rdkafka::message::Message;
use reliable_kafka::{
    headers, CircuitBreaker, DeadLetterRedriver, EnqueueOptions, FixedBackOff, ListenerContainer, Outbox, OutboxRelay,
};
use reliable_kafka_tests::*;

/// Seed 003's timeout of the notification call (scenario 2 and its
/// `networkTimeoutTest`); `SEED_003_TIMEOUT_SECS` sets another.
fn seed_timeout() -> Duration {
    let secs = std::env::var("SEED_003_TIMEOUT_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    Duration::from_secs(secs)
}

struct Setup {
    pool: sqlx::PgPool,
    _schema: String,
    topic: String,
    receiver: DemoReceiver,
    server: Server,
}

/// A fresh schema with completed payments `1..=n` (for the notification rows' foreign
/// key), a `payment-notification` topic of `partitions` partitions and its `.DLQ`, one
/// `PaymentCompleted` per payment in the outbox, and a demo receiver.
async fn setup(n: i64, partitions: i32, behaviour: ReceiverBehaviour) -> Setup {
    let (pool, schema) = isolated_pool().await;
    concert::migrate(&pool.clone().into()).await.unwrap();
    sqlx::raw_sql(&format!(
        "INSERT INTO concert (id, title) VALUES (1, 't');
         INSERT INTO concert_date VALUES (1, 1, now(), {n}, 0);
         INSERT INTO seat (concert_date_id, number, price, status) SELECT 1, k, 10, 'SOLD' FROM generate_series(1, {n}) k;
         INSERT INTO app_user (name, balance) SELECT 'u' || k, 0 FROM generate_series(1, {n}) k;
         INSERT INTO reservation (user_id, seat_id, concert_date_id, status) SELECT k, k, 1, 'CONFIRMED' FROM generate_series(1, {n}) k;
         INSERT INTO payment (reservation_id, user_id, amount, status, charged) SELECT k, k, 10, 'COMPLETED', true FROM generate_series(1, {n}) k;"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let topic = unique("payment-notification");
    create_topics(&kafka(), &topic, partitions).await;
    let outbox = Outbox::new();
    let mut tx = pool.begin().await.unwrap();
    for id in 1..=n {
        let e = PaymentCompleted { payment_id: id, reservation_id: id, user_id: id, amount: 10, ..Default::default() };
        outbox
            .enqueue_with(&mut tx, &e, EnqueueOptions { topic: Some(topic.clone()), ..Default::default() })
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let receiver = DemoReceiver::new(behaviour);
    let server = receiver.start(([127, 0, 0, 1], 0).into()).await.unwrap();
    Setup { pool, _schema: schema, topic, receiver, server }
}

impl Setup {
    fn notifier(&self, request_timeout: Duration, attempts: u32) -> WebhookNotifier {
        WebhookNotifier::new(format!("{}/notify", self.server.url()), Duration::from_millis(300), request_timeout)
            .unwrap()
            .backoff(FixedBackOff::new(Duration::from_millis(50), attempts).unwrap())
            .on(&self.topic, unique("telegram-notification"))
    }

    async fn notified(&self) -> Vec<i64> {
        sqlx::query_scalar("SELECT payment_id FROM notification ORDER BY 1").fetch_all(&self.pool).await.unwrap()
    }
}

/// Scenario 1 and `deadLetterQueueTest`: the receiver answers `503`; without a circuit
/// breaker (as the seed has none) each attempt fails, and the notification lands on
/// `payment-notification.DLQ` with Spring's headers naming where it came from and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_from_the_receiver_dead_letters_the_notification_with_its_origin_and_reason() {
    let s = setup(1, 1, ReceiverBehaviour::default()).await;
    s.receiver.set_down(true);
    let kafka = kafka();
    let relay = OutboxRelay::builder(kafka.clone(), s.pool.clone()).build().unwrap().spawn();
    let c = ListenerContainer::builder(kafka.clone(), s.pool.clone())
        .handler(s.notifier(Duration::from_secs(2), 3).without_circuit_breaker())
        .build()
        .unwrap()
        .spawn();
    let dlq = read_topic(&kafka, &format!("{}.DLQ", s.topic), 1, Duration::from_secs(30), Duration::ZERO).await;
    c.shutdown().await.unwrap();
    relay.shutdown().await.unwrap();

    assert_eq!(dlq.len(), 1, "one dead-lettered notification");
    let m = &dlq[0];
    assert_eq!(header(m, headers::DLT_ORIGINAL_TOPIC).as_deref(), Some(s.topic.as_str()));
    assert_eq!(header(m, headers::DLT_REASON).as_deref(), Some("retries-exhausted"));
    assert_eq!(header(m, headers::DLT_ATTEMPTS).as_deref(), Some("3"));
    let why = header(m, headers::DLT_EXCEPTION_MESSAGE).unwrap_or_default();
    assert!(why.contains("503"), "the reason names the 503: {why}");
    let event: PaymentCompleted = serde_json::from_slice(m.payload().unwrap()).unwrap();
    assert_eq!(event.payment_id, 1, "the payload is the original event");
    assert_eq!(s.receiver.outage_calls(), 3, "one call per attempt");
    assert!(s.notified().await.is_empty());
}

/// The application's choice over seed 003's scenario 1: with the circuit breaker (the
/// app's setting), a `503` outage dead-letters nothing; the notifications wait and are
/// delivered once each when the receiver is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_circuit_breaker_an_outage_dead_letters_nothing_and_everything_arrives_after_it() {
    let s = setup(5, 1, ReceiverBehaviour::default()).await;
    s.receiver.set_down(true);
    let kafka = kafka();
    let relay = OutboxRelay::builder(kafka.clone(), s.pool.clone()).build().unwrap().spawn();
    let notifier = s.notifier(Duration::from_secs(2), 3).circuit_breaker(CircuitBreaker::new(
        3,
        Duration::from_secs(10),
        Duration::from_millis(500),
    ));
    let c = ListenerContainer::builder(kafka.clone(), s.pool.clone()).handler(notifier).build().unwrap().spawn();
    assert!(
        eventually(Duration::from_secs(30), || async { s.receiver.outage_calls() >= 3 }).await,
        "calls during the outage"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.receiver.set_down(false);
    assert!(
        eventually(Duration::from_secs(30), || async { c.stats().processed() == 5 }).await,
        "all delivered after it"
    );
    let dead_lettered = c.stats().dead_lettered();
    c.shutdown().await.unwrap();
    relay.shutdown().await.unwrap();

    assert_eq!(dead_lettered, 0);
    assert_eq!(s.notified().await, [1, 2, 3, 4, 5]);
    assert!(s.receiver.accepted().values().all(|n| *n == 1), "each accepted once: {:?}", s.receiver.accepted());
}

/// Scenario 2 and `networkTimeoutTest`: the receiver answers after 31 s, past the
/// seed's 30 s timeout of the call; the notification is dead-lettered as a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_slower_than_the_30_s_timeout_dead_letters_the_notification() {
    let timeout = seed_timeout();
    let s = setup(
        1,
        1,
        ReceiverBehaviour { delay_rate: 1.0, delay: timeout + Duration::from_secs(1), ..Default::default() },
    )
    .await;
    let kafka = kafka();
    let relay = OutboxRelay::builder(kafka.clone(), s.pool.clone()).build().unwrap().spawn();
    let c = ListenerContainer::builder(kafka.clone(), s.pool.clone())
        // One attempt, as the seed's test (no breaker: it needs more than one attempt);
        // the handler may run past the call's timeout.
        .handler(s.notifier(timeout, 1).without_circuit_breaker())
        .handler_timeout(timeout + Duration::from_secs(10))
        .build()
        .unwrap()
        .spawn();
    let dlq =
        read_topic(&kafka, &format!("{}.DLQ", s.topic), 1, timeout + Duration::from_secs(30), Duration::ZERO).await;
    c.shutdown().await.unwrap();
    relay.shutdown().await.unwrap();

    assert_eq!(dlq.len(), 1, "dead-lettered after the timeout");
    let why = header(&dlq[0], headers::DLT_EXCEPTION_MESSAGE).unwrap_or_default();
    assert!(why.contains("timed out"), "the reason is the timeout: {why}");
    assert!(s.notified().await.is_empty());
    assert_eq!(s.receiver.faults().1, 1, "the one call was the delayed one");
}

/// `retrySchedulerTest` and scenario 1's end: a notification dead-lettered while the
/// receiver failed is re-driven to `payment-notification` and delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_notification_is_delivered_once_when_the_receiver_is_back() {
    let s = setup(2, 1, ReceiverBehaviour { always_fail_every: 2, ..Default::default() }).await;
    let kafka = kafka();
    let relay = OutboxRelay::builder(kafka.clone(), s.pool.clone()).build().unwrap().spawn();
    let c = ListenerContainer::builder(kafka.clone(), s.pool.clone())
        .handler(s.notifier(Duration::from_secs(2), 3).without_circuit_breaker())
        .build()
        .unwrap()
        .spawn();
    assert!(
        eventually(Duration::from_secs(30), || async { c.stats().dead_lettered() == 1 && c.stats().processed() == 1 })
            .await,
        "payment 2 dead-lettered, payment 1 delivered"
    );
    s.receiver.set_behaviour(ReceiverBehaviour::default());
    let redriver = DeadLetterRedriver::builder(kafka.clone(), s.pool.clone())
        .topic(format!("{}.DLQ", s.topic))
        .group_id(unique("notification-redrive"))
        .build()
        .unwrap();
    let r = redriver.redrive_once().await.unwrap();
    assert_eq!((r.redriven, r.parked), (1, 0));
    assert!(
        eventually(Duration::from_secs(30), || async { c.stats().processed() == 2 }).await,
        "re-driven one delivered"
    );
    c.shutdown().await.unwrap();
    relay.shutdown().await.unwrap();

    assert_eq!(s.notified().await, [1, 2]);
    assert_eq!(s.receiver.accepted(), HashMap::from([(1, 1), (2, 1)]), "each accepted once");
    assert_eq!(redriver.redrive_once().await.unwrap().redriven, 0, "nothing left to re-drive");
}

/// `performanceTest`, with faults: 1,000 notifications through the outbox, 3
/// partitions processed concurrently, 5 % of calls answered `500` and every 97th
/// payment always refused. Every notification ends delivered or parked (after 3
/// re-drives), never both, and the receiver accepts none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_notifications_are_each_delivered_or_parked_and_none_twice() {
    const N: i64 = 1000;
    let s = setup(N, 3, ReceiverBehaviour { fail_rate: 0.05, always_fail_every: 97, ..Default::default() }).await;
    let kafka = kafka();
    let relay = OutboxRelay::builder(kafka.clone(), s.pool.clone()).build().unwrap().spawn();
    let c = ListenerContainer::builder(kafka.clone(), s.pool.clone())
        .handler(s.notifier(Duration::from_secs(2), 3).without_circuit_breaker())
        .partition_concurrency(3)
        .consumer_property("fetch.wait.max.ms", "50")
        .build()
        .unwrap()
        .spawn();
    let redriver = DeadLetterRedriver::builder(kafka.clone(), s.pool.clone())
        .topic(format!("{}.DLQ", s.topic))
        .group_id(unique("notification-redrive"))
        .interval(Duration::from_millis(500))
        .build()
        .unwrap()
        .spawn();
    let parked_ids = |pool: sqlx::PgPool| async move {
        let payloads: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT payload FROM rk_parked_messages").fetch_all(&pool).await.unwrap();
        payloads.iter().map(|p| serde_json::from_slice::<PaymentCompleted>(p).unwrap().payment_id).collect::<Vec<i64>>()
    };
    let settled = eventually(Duration::from_secs(180), || async {
        s.notified().await.len() as i64 + parked_ids(s.pool.clone()).await.len() as i64 == N
    })
    .await;
    redriver.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
    relay.shutdown().await.unwrap();
    assert!(settled, "every notification delivered or parked");

    let delivered: BTreeSet<i64> = s.notified().await.into_iter().collect();
    let parked = parked_ids(s.pool.clone()).await;
    let parked_set: BTreeSet<i64> = parked.iter().copied().collect();
    assert_eq!(parked.len(), parked_set.len(), "none parked twice");
    assert_eq!(parked_set, (1..=N).filter(|id| id % 97 == 0).collect(), "exactly the always-refused ones parked");
    assert!(delivered.is_disjoint(&parked_set), "none both delivered and parked");
    assert_eq!(delivered.len() as i64 + parked_set.len() as i64, N, "none lost");
    let accepted = s.receiver.accepted();
    assert_eq!(accepted.len(), delivered.len());
    assert!(accepted.values().all(|n| *n == 1), "the receiver accepted none twice");
    assert!(s.receiver.faults().0 > 0, "faults were injected");
}
