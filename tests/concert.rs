//! The reference application's flows one by one, against real PostgreSQL, Redis, the
//! broker and real local HTTP servers (the demo gateway and webhook receiver).

use std::time::Duration;

use concert::api::{router, ApiState, IDEMPOTENCY_KEY_HEADER};
use concert::booking::{Booking, PaymentView};
use concert::events::PaymentCompleted;
use concert::gateway::{DemoGateway, GatewayBehaviour, GatewayClient};
use concert::http::Server;
use concert::recovery::PaymentRecovery;
use concert::store::Store;
use concert::webhook::{DemoReceiver, ReceiverBehaviour, WebhookNotifier};
use reliable_kafka::{
    CircuitBreaker, DeadLetterRedriver, EnqueueOptions, FixedBackOff, ListenerContainer, Outbox, OutboxRelay,
};
use reliable_kafka_tests::*;
use reqwest::StatusCode;
use serde_json::json;

struct World {
    pool: sqlx::PgPool,
    store: Store,
    gateway: DemoGateway,
    _gateway_server: Server,
    api: Server,
    http: reqwest::Client,
}

/// The API on a free port over a fresh schema, with a demo gateway; `n` users with
/// 100 000 points and `n` seats at 50 000.
async fn world(n: i64, gateway: GatewayBehaviour, request_timeout: Duration) -> World {
    let (pool, schema) = isolated_pool().await;
    concert::migrate(&pool.clone().into()).await.unwrap();
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let store = Store::connect(&redis, Duration::from_secs(600), &schema).await.unwrap();
    let g = DemoGateway::new(gateway);
    let gateway_server = g.start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let client = GatewayClient::new(gateway_server.url(), Duration::from_millis(300), request_timeout, 3).unwrap();
    let booking = Booking::new(pool.clone().into(), store.clone(), client);
    let api = Server::start(
        router(ApiState { booking, outbox: Outbox::new(), probes: Vec::new(), metrics: None }),
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .unwrap();
    sqlx::query("INSERT INTO concert (id, title) VALUES (1, 't')").execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO concert_date (id, concert_id, starts_at, total_seat_count, available_seat_count) VALUES (1, 1, now(), $1, $1)")
        .bind(n as i32)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO seat (concert_date_id, number, price, status) SELECT 1, k, 50000, 'AVAILABLE' FROM generate_series(1, $1) k")
        .bind(n as i32)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO app_user (name, balance, mail) SELECT 'u' || k, 100000, 'u' || k || '@example.com' FROM generate_series(1, $1) k")
        .bind(n as i32)
        .execute(&pool)
        .await
        .unwrap();
    World { pool, store, gateway: g, _gateway_server: gateway_server, api, http: reqwest::Client::new() }
}

impl World {
    /// Token, reservation and checkout for `user` on seat `user`; returns the
    /// reservation id and the idempotency key.
    async fn checkout(&self, user: i64) -> (i64, String) {
        checkout_over_http(&self.http, &self.api.url(), user).await
    }

    async fn pay(&self, key: &str, reservation: i64, user: i64) -> (StatusCode, serde_json::Value) {
        let resp = self
            .http
            .post(format!("{}/api/payments", self.api.url()))
            .header(IDEMPOTENCY_KEY_HEADER, key)
            .json(&json!({ "reservation_id": reservation, "user_id": user }))
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json().await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_checkout_sent_many_times_pays_once_and_answers_the_same() {
    let w = world(2, GatewayBehaviour::default(), Duration::from_secs(2)).await;
    let (reservation, key) = w.checkout(1).await;
    let concurrent = futures::future::join_all((0..5).map(|_| w.pay(&key, reservation, 1))).await;
    let mut answers = concurrent;
    for _ in 0..3 {
        answers.push(w.pay(&key, reservation, 1).await);
    }
    let first: PaymentView = serde_json::from_value(answers[0].1.clone()).unwrap();
    assert_eq!(first.status, "COMPLETED");
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK);
        assert_eq!(body, &answers[0].1, "every repetition gets the same answer");
    }
    assert_eq!(count(&w.pool, "SELECT count(*) FROM payment").await, 1, "one payment");
    assert_eq!(w.gateway.charges().len(), 1, "one charge at the gateway");
    let balance: i64 =
        sqlx::query_scalar("SELECT balance FROM app_user WHERE id = 1").fetch_one(&w.pool).await.unwrap();
    assert_eq!(balance, 50_000, "charged once");
    // Seed 002: the token expires (and the seat hold goes) in Redis after the commit, not by Kafka.
    assert_eq!(w.store.count_existing(&[w.store.token_key(1), w.store.hold_key(1)]).await.unwrap(), 0);
    // Seed 003's notification event carries mail, concert title, start and confirmation.
    let payload: Vec<u8> = sqlx::query_scalar("SELECT payload FROM rk_outbox WHERE type = 'payment.completed'")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    let event: PaymentCompleted = serde_json::from_slice(&payload).unwrap();
    assert_eq!((event.mail.as_deref(), event.concert_title.as_str()), (Some("u1@example.com"), "t"));
    let starts_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT starts_at FROM concert_date WHERE id = 1").fetch_one(&w.pool).await.unwrap();
    assert_eq!(event.starts_at, starts_at);
    assert!(event.confirmed_at >= starts_at, "confirmed after the date was created at now()");

    // The same key with another body is refused with a stable code.
    let (status, body) = w.pay(&key, reservation, 2).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    // Bad input gets a 4xx with a clear message.
    let resp = w
        .http
        .post(format!("{}/api/payments", w.api.url()))
        .json(&json!({ "reservation_id": reservation, "user_id": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["error"]["code"], "idempotency_key_required");
    let resp =
        w.http.post(format!("{}/api/reservations", w.api.url())).json(&json!({ "user_id": "x" })).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["error"]["code"], "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_payments_are_recovered_once_by_two_recovery_instances() {
    // The gateway decides every charge but answers after 2 s, past the 200 ms timeout.
    let behaviour =
        GatewayBehaviour { decline_rate: 0.5, hang_rate: 1.0, hang: Duration::from_secs(2), ..Default::default() };
    let n = 12;
    let w = world(n, behaviour, Duration::from_millis(200)).await;
    for user in 1..=n {
        let (reservation, key) = w.checkout(user).await;
        let (status, body) = w.pay(&key, reservation, user).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["status"], "IN_PROGRESS");
    }
    let client =
        GatewayClient::new(w._gateway_server.url(), Duration::from_millis(300), Duration::from_secs(5), 3).unwrap();
    let a =
        PaymentRecovery::new(w.pool.clone().into(), w.store.clone(), client.clone(), "a", Duration::from_millis(500));
    let b = PaymentRecovery::new(w.pool.clone().into(), w.store.clone(), client, "b", Duration::from_millis(500));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (ra, rb) = tokio::join!(a.recover_once(), b.recover_once());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra + rb, n as usize, "a={ra} b={rb}");
    assert_eq!(count(&w.pool, "SELECT count(*) FROM payment WHERE status = 'IN_PROGRESS'").await, 0);
    assert_eq!(count(&w.pool, "SELECT count(*) FROM payment_recovery").await, n, "each payment recovered once");
    assert_eq!(count(&w.pool, "SELECT count(DISTINCT payment_id) FROM payment_recovery").await, n);
    // The outcome is the gateway's.
    for (id, status) in w.gateway.charges() {
        let want = if status == concert::gateway::ChargeStatus::Approved { "COMPLETED" } else { "FAILED" };
        let got: String =
            sqlx::query_scalar("SELECT status FROM payment WHERE id = $1").bind(id).fetch_one(&w.pool).await.unwrap();
        assert_eq!(got, want, "payment {id}");
    }
    // Completed payments enqueued their events; failed ones their compensation.
    let completed = count(&w.pool, "SELECT count(*) FROM payment WHERE status = 'COMPLETED'").await;
    assert_eq!(count(&w.pool, "SELECT count(*) FROM rk_outbox WHERE type = 'payment.completed'").await, completed);
    assert_eq!(count(&w.pool, "SELECT count(*) FROM rk_outbox WHERE type = 'PaymentFailed'").await, n - completed);
}

/// The partitions each recovery process holds now, by its `application_name`.
async fn partitions_by_instance(pool: &sqlx::PgPool, names: &[String]) -> std::collections::BTreeMap<String, Vec<i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT a.application_name, l.objid::int8 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.objid::int8 < 1000000 \
         AND a.application_name = ANY($1) ORDER BY 2",
    )
    .bind(names)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = std::collections::BTreeMap::new();
    for (name, p) in rows {
        out.entry(name).or_insert_with(Vec::new).push(p);
    }
    out
}

/// Seed 004's recovery scaled by partitioning: three recovery processes split 6
/// partitions of the stuck payments 2/2/2; one is SIGKILLed mid-run, the other two
/// take its partitions (3/3), and every stuck payment is settled exactly once, the
/// killed one's only from its own partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_recovery_processes_split_the_partitions_and_one_killed_loses_no_payment() {
    let behaviour =
        GatewayBehaviour { decline_rate: 0.5, hang_rate: 1.0, hang: Duration::from_secs(2), ..Default::default() };
    let n = 36;
    let w = world(n, behaviour, Duration::from_millis(200)).await;
    let w = &w;
    let pays = (1..=n).map(|user| async move {
        let (reservation, key) = w.checkout(user).await;
        w.pay(&key, reservation, user).await
    });
    for (status, body) in futures::future::join_all(pays).await {
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let schema: String = sqlx::query_scalar("SELECT current_schema()").fetch_one(&w.pool).await.unwrap();
    let names: Vec<String> = ["a", "b", "c"].iter().map(|x| format!("rec-{schema}-{x}")).collect();
    let spawn = |name: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rk-test-recovery"))
            .args([&schema, name, "6", "1", &w._gateway_server.url()])
            .spawn()
            .expect("spawn recovery")
    };
    let mut children: Vec<_> = names.iter().map(|name| spawn(name)).collect();
    let split = eventually(Duration::from_secs(20), || async {
        let held = partitions_by_instance(&w.pool, &names).await;
        held.len() == 3 && held.values().all(|p| p.len() == 2)
    })
    .await;
    let before_kill = partitions_by_instance(&w.pool, &names).await;
    // Mid-run: once the first process has settled a payment from its own share.
    let split_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&w.pool).await.unwrap();
    let since_split = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT payment_id FROM payment_recovery WHERE recovered_by = $1 AND recovered_at > $2",
        )
        .bind(&names[0])
        .bind(split_at)
        .fetch_all(&w.pool)
        .await
        .unwrap()
    };
    let working = eventually(Duration::from_secs(20), || async { !since_split().await.is_empty() }).await;
    children[0].kill().expect("SIGKILL");
    children[0].wait().unwrap();
    let taken_over = eventually(Duration::from_secs(20), || async {
        let held = partitions_by_instance(&w.pool, &names).await;
        held.len() == 2 && held.values().all(|p| p.len() == 3)
    })
    .await;
    let settled = eventually(Duration::from_secs(60), || async {
        count(&w.pool, "SELECT count(*) FROM payment WHERE status = 'IN_PROGRESS'").await == 0
    })
    .await;
    for c in &mut children[1..] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    assert!(split, "2 partitions each: {before_kill:?}");
    assert!(taken_over, "the killed one's partitions taken over: {:?}", partitions_by_instance(&w.pool, &names).await);
    assert!(settled, "every stuck payment settled");
    assert_eq!(count(&w.pool, "SELECT count(*) FROM payment_recovery").await, n, "each payment recovered once");
    assert_eq!(count(&w.pool, "SELECT count(DISTINCT payment_id) FROM payment_recovery").await, n);
    // Before the split the first process held every partition; after it, only its own.
    let killed = since_split().await;
    let own = &before_kill[&names[0]];
    assert!(working, "the first process settled payments after the split");
    assert!(
        killed.iter().all(|id| own.contains(&(id % 6))),
        "after the split, only its partitions {own:?}: {killed:?}"
    );
    let by: i64 = sqlx::query_scalar("SELECT count(DISTINCT recovered_by) FROM payment_recovery")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert!(by >= 2, "the work was shared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coupons_are_never_issued_above_stock_or_twice_to_a_user() {
    let w = world(30, GatewayBehaviour::default(), Duration::from_secs(2)).await;
    sqlx::query("INSERT INTO coupon_stock (id, name, total, remaining) VALUES (1, 'c', 10, 10)")
        .execute(&w.pool)
        .await
        .unwrap();
    let base = w.api.url();
    // 30 users, each asking twice at the same time.
    let requests = (1..=30).flat_map(|u| [u, u]).map(|u| {
        let http = w.http.clone();
        let url = format!("{base}/api/coupons/1/requests");
        async move { http.post(url).json(&json!({ "user_id": u })).send().await.unwrap().status() }
    });
    let statuses = futures::future::join_all(requests).await;
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::ACCEPTED).count(), 10);
    assert!(statuses.iter().all(|s| *s == StatusCode::ACCEPTED || *s == StatusCode::CONFLICT));
    assert_eq!(
        count(&w.pool, "SELECT count(*) FROM rk_outbox WHERE type = 'CouponIssueRequested'").await,
        10,
        "one event per granted request"
    );
    assert_eq!(count(&w.pool, "SELECT remaining::bigint FROM coupon_stock WHERE id = 1").await, 0);

    // The consumer creates them; a duplicate delivery (same message id) issues nothing more.
    let kafka = kafka();
    let topic = unique("coupon");
    create_topics(&kafka, &topic, 3).await;
    sqlx::query("UPDATE rk_outbox SET aggregatetype = $1").bind(&topic).execute(&w.pool).await.unwrap();
    sqlx::query("INSERT INTO rk_outbox (id, aggregatetype, aggregateid, type, schema_version, payload, content_type, headers)
                 SELECT gen_random_uuid(), aggregatetype, aggregateid, type, schema_version, payload, content_type, headers
                 FROM rk_outbox LIMIT 3")
        .execute(&w.pool)
        .await
        .unwrap();
    let relay = OutboxRelay::builder(kafka.clone(), w.pool.clone()).build().unwrap().spawn();
    let c = ListenerContainer::builder(kafka.clone(), w.pool.clone())
        .handler(CouponOn(topic.clone()))
        .group_id(unique("coupon-issue"))
        .build()
        .unwrap()
        .spawn();
    assert!(eventually(Duration::from_secs(30), || async { c.stats().processed() == 13 }).await);
    c.shutdown().await.unwrap();
    relay.shutdown().await.expect("graceful shutdown");
    assert_eq!(count(&w.pool, "SELECT count(*) FROM coupon").await, 10, "re-published requests issued nothing twice");
    assert_eq!(count(&w.pool, "SELECT count(DISTINCT user_id) FROM coupon").await, 10);
}

/// `issue_coupon` on another topic.
struct CouponOn(String);

impl reliable_kafka::EventHandler for CouponOn {
    type Event = concert::events::CouponIssueRequested;
    fn options(&self) -> reliable_kafka::HandlerOptions {
        reliable_kafka::HandlerOptions::new().topic(self.0.clone())
    }
    fn handle<'a>(
        &'a self,
        event: Self::Event,
        ctx: &'a mut reliable_kafka::HandlerContext,
    ) -> futures::future::BoxFuture<'a, Result<(), reliable_kafka::HandlerError>> {
        concert::handlers::issue_coupon.handle(event, ctx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_notifications_are_retried_dead_lettered_redriven_three_times_then_parked() {
    let (pool, _schema) = isolated_pool().await;
    concert::migrate(&pool.clone().into()).await.unwrap();
    sqlx::query("INSERT INTO concert (id, title) VALUES (1, 't'); ").execute(&pool).await.unwrap();
    // Payments 1..=4 exist for the notification rows' foreign key.
    sqlx::raw_sql(
        "INSERT INTO concert_date VALUES (1, 1, now(), 4, 0);
         INSERT INTO seat (concert_date_id, number, price, status) SELECT 1, k, 10, 'SOLD' FROM generate_series(1, 4) k;
         INSERT INTO app_user (name, balance) SELECT 'u' || k, 0 FROM generate_series(1, 4) k;
         INSERT INTO reservation (user_id, seat_id, concert_date_id, status) SELECT k, k, 1, 'CONFIRMED' FROM generate_series(1, 4) k;
         INSERT INTO payment (reservation_id, user_id, amount, status, charged) SELECT k, k, 10, 'COMPLETED', true FROM generate_series(1, 4) k;",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Payment 4 always gets 500; the others stall past the timeout on 30 % of calls.
    let receiver = DemoReceiver::new(ReceiverBehaviour {
        always_fail_every: 4,
        delay_rate: 0.3,
        delay: Duration::from_millis(800),
        fail_rate: 0.0,
    });
    let server = receiver.start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let kafka = kafka();
    let topic = unique("payment-notification");
    create_topics(&kafka, &topic, 1).await;
    let outbox = Outbox::new();
    let mut tx = pool.begin().await.unwrap();
    for id in 1..=4 {
        let e = PaymentCompleted { payment_id: id, reservation_id: id, user_id: id, amount: 10, ..Default::default() };
        outbox
            .enqueue_with(&mut tx, &e, EnqueueOptions { topic: Some(topic.clone()), ..Default::default() })
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    let notifier = WebhookNotifier::new(
        format!("{}/notify", server.url()),
        Duration::from_millis(200),
        Duration::from_millis(300),
    )
    .unwrap()
    // 5 attempts: a stall on every one of them (0.3^5) would dead-letter a payment that
    // is not the failing one. The breaker opens after 3 failures in a row (payment 4's,
    // or stalls); its short cool-down keeps the test quick.
    .backoff(FixedBackOff::new(Duration::from_millis(100), 5).unwrap())
    .circuit_breaker(CircuitBreaker::new(3, Duration::from_secs(10), Duration::from_millis(500)))
    .on(&topic, unique("telegram-notification"));
    let relay = OutboxRelay::builder(kafka.clone(), pool.clone()).build().unwrap().spawn();
    let c = ListenerContainer::builder(kafka.clone(), pool.clone()).handler(notifier).build().unwrap().spawn();
    let redriver = DeadLetterRedriver::builder(kafka.clone(), pool.clone())
        .topic(format!("{topic}.DLQ"))
        .group_id(unique("redrive"))
        .interval(Duration::from_millis(500))
        .build()
        .unwrap()
        .spawn();
    assert!(eventually(Duration::from_secs(60), || async { redriver.stats().parked() == 1 }).await, "payment 4 parked");
    let stats = (c.stats().processed(), c.stats().dead_lettered(), redriver.stats().redriven());
    redriver.shutdown().await.expect("graceful shutdown");
    c.shutdown().await.unwrap();
    relay.shutdown().await.expect("graceful shutdown");
    server.stop().await;

    assert_eq!(stats.0, 3, "three notifications delivered");
    assert_eq!(stats.1, 4, "payment 4 dead-lettered on its delivery and each of 3 re-drives");
    assert_eq!(stats.2, 3, "re-driven exactly 3 times");
    let notified: Vec<i64> =
        sqlx::query_scalar("SELECT payment_id FROM notification ORDER BY 1").fetch_all(&pool).await.unwrap();
    assert_eq!(notified, [1, 2, 3]);
    let accepted = receiver.accepted();
    assert!([1, 2, 3].iter().all(|id| accepted.contains_key(id)) && !accepted.contains_key(&4));
    let (reason, redrives): (String, i32) =
        sqlx::query_as("SELECT reason, redrive_count FROM rk_parked_messages").fetch_one(&pool).await.unwrap();
    assert_eq!((reason.as_str(), redrives), ("re-driven 3 times (max 3)", 3));
}
