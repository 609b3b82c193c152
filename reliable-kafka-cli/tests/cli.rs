//! `rk` against a reference-app run on real PostgreSQL and the broker
//! (`KAFKA_BROKERS`, tansu in CI): the concert app's notification group dead-letters
//! the notifications a failing webhook refuses, its re-driver parks them, and `rk`
//! lists, replays and purges them. Each notification reaches the webhook once, and
//! each operation leaves its audit row.

use std::process::Output;
use std::time::Duration;

use concert::events::PaymentCompleted;
use concert::webhook::{DemoReceiver, ReceiverBehaviour, WebhookNotifier};
use reliable_kafka::{DeadLetterRedriver, EnqueueOptions, Event, ListenerContainer, Outbox, OutboxRelay};
use reliable_kafka_tests::*;
use serde_json::Value;

/// Runs `rk` with the test's database schema and broker.
fn rk(schema: &str, args: &[&str]) -> Output {
    let base = database_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    std::process::Command::new(env!("CARGO_BIN_EXE_rk"))
        .args(args)
        .env("DATABASE_URL", format!("{base}{sep}options[search_path]={schema}"))
        .env("KAFKA_BROKERS", kafka().brokers())
        .env("RK_OPERATOR", "night-shift")
        .output()
        .expect("run rk")
}

/// `rk --output json …`, which must succeed; its JSON.
fn rk_json(schema: &str, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let out = rk(schema, &all);
    assert!(out.status.success(), "rk {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("rk {args:?} printed no JSON ({e}): {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rk_lists_replays_and_purges_what_a_reference_app_run_left_and_audits_it() {
    let (pool, schema) = isolated_pool().await;
    concert::migrate(&pool.clone().into()).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO concert (id, title) VALUES (1, 't');
         INSERT INTO concert_date VALUES (1, 1, now(), 9, 0);
         INSERT INTO seat (concert_date_id, number, price, status) SELECT 1, k, 10, 'SOLD' FROM generate_series(1, 9) k;
         INSERT INTO app_user (name, balance) SELECT 'u' || k, 0 FROM generate_series(1, 9) k;
         INSERT INTO reservation (user_id, seat_id, concert_date_id, status) SELECT k, k, 1, 'CONFIRMED' FROM generate_series(1, 9) k;
         INSERT INTO payment (reservation_id, user_id, amount, status, charged) SELECT k, k, 10, 'COMPLETED', true FROM generate_series(1, 9) k;",
    )
    .execute(&pool)
    .await
    .unwrap();
    // The webhook refuses payments 4 and 8 until it is fixed.
    let failing = ReceiverBehaviour { always_fail_every: 4, ..ReceiverBehaviour::default() };
    let receiver = DemoReceiver::new(failing);
    let server = receiver.start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let kafka = kafka();
    let topic = unique("payment-notification");
    let dlt = format!("{topic}.DLQ");
    create_topics(&kafka, &topic, 1).await;
    let mut tx = pool.begin().await.unwrap();
    for id in 1..=8 {
        let e = PaymentCompleted { payment_id: id, reservation_id: id, user_id: id, amount: 10, ..Default::default() };
        let to = EnqueueOptions { topic: Some(topic.clone()), ..Default::default() };
        Outbox::new().enqueue_with(&mut tx, &e, to).await.unwrap();
    }
    tx.commit().await.unwrap();
    let notifier = WebhookNotifier::new(
        format!("{}/notify", server.url()),
        Duration::from_millis(200),
        Duration::from_millis(500),
    )
    .unwrap()
    .on(&topic, unique("telegram-notification"));
    let relay = OutboxRelay::builder(kafka.clone(), pool.clone()).build().unwrap().spawn();
    let c = ListenerContainer::builder(kafka.clone(), pool.clone()).handler(notifier).build().unwrap().spawn();
    assert!(
        eventually(Duration::from_secs(60), || async { c.stats().dead_lettered() == 2 }).await,
        "4 and 8 dead-lettered"
    );
    // The app's re-drive scheduler, told to re-drive nothing: it parks both.
    let redriver = DeadLetterRedriver::builder(kafka.clone(), pool.clone())
        .topic(dlt.clone())
        .group_id(unique("redrive"))
        .max_redrives(0)
        .build()
        .unwrap();
    assert_eq!(redriver.redrive_once().await.unwrap().parked, 2);
    // A Spring service sharing the topic dead-lettered payment 9's event, which our
    // relay wrote: Spring's `kafka_dlt-*` headers, no `rk-dlt-reason`.
    let id = uuid::Uuid::now_v7().to_string();
    let payload = serde_json::to_vec(&PaymentCompleted {
        payment_id: 9,
        reservation_id: 9,
        user_id: 9,
        amount: 10,
        ..Default::default()
    })
    .unwrap();
    let (partition, offset) = (0_i32.to_be_bytes(), 123_i64.to_be_bytes());
    let spring_headers: [(&str, &[u8]); 7] = [
        ("rk-message-id", id.as_bytes()),
        ("rk-event-type", PaymentCompleted::EVENT_TYPE.as_bytes()),
        ("kafka_dlt-original-topic", topic.as_bytes()),
        ("kafka_dlt-original-partition", &partition),
        ("kafka_dlt-original-offset", &offset),
        ("kafka_dlt-exception-fqcn", b"org.springframework.kafka.listener.ListenerExecutionFailedException"),
        ("kafka_dlt-exception-message", b"Listener failed"),
    ];
    produce_raw(&kafka, &dlt, "9", &payload, &spring_headers).await;

    // What rk sees.
    let status = rk_json(&schema, &["outbox", "status"]);
    assert_eq!((status["pending"].as_u64(), status["parked_dead_letters"].as_u64()), (Some(0), Some(2)), "{status}");
    let dead = rk_json(&schema, &["dlq", "list", "--topic", &dlt]);
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 3);
    let keys: Vec<&str> = dead.iter().map(|d| d["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["4", "8", "9"]);
    assert_eq!(dead[2]["reason"], Value::Null, "Spring writes no reason");
    assert_eq!(dead[0]["reason"], "retries-exhausted");
    assert_eq!(dead[0]["original_topic"].as_str(), Some(topic.as_str()));
    let partition = dead[0]["headers"].as_array().unwrap().iter().find(|h| h["key"] == "kafka_dlt-original-partition");
    assert_eq!(partition.unwrap()["value"], "0", "Spring's big-endian partition, decoded");
    assert_eq!(dead[0]["payload"]["json"]["payment_id"], 4);
    let only_8 = rk_json(&schema, &["dlq", "list", "--topic", &dlt, "--key", "8", "--since", "1h"]);
    assert_eq!(only_8.as_array().unwrap().len(), 1);
    let shown = rk_json(
        &schema,
        &["dlq", "show", "--topic", &dlt, "--partition", "0", "--offset", dead[1]["offset"].to_string().as_str()],
    );
    assert_eq!(shown["key"], "8");
    let missing = rk(&schema, &["dlq", "show", "--topic", &dlt, "--partition", "0", "--offset", "999"]);
    assert_eq!(missing.status.code(), Some(4));
    let parked = rk_json(&schema, &["parked", "list"]);
    assert_eq!(parked.as_array().unwrap().len(), 2);
    let id = parked[1]["id"].as_i64().unwrap(); // oldest: payment 4
    let one = rk_json(&schema, &["parked", "show", &id.to_string()]);
    assert_eq!((one["key"].as_str(), one["payload"]["json"]["payment_id"].as_i64()), (Some("4"), Some(4)));

    // The webhook is fixed. Replay: a dry run first, then one parked record, then the
    // whole dead-letter topic (payment 4 a second time: deduplicated), then purge.
    receiver.set_behaviour(ReceiverBehaviour::default());
    let dry = rk_json(&schema, &["dlq", "replay", "--topic", &dlt, "--dry-run"]);
    assert_eq!((dry["redriven"].as_u64(), dry["dry_run"].as_bool()), (Some(3), Some(true)));
    let replayed = rk_json(&schema, &["parked", "replay", "--limit", "1"]);
    assert_eq!(replayed["replayed"], 1);
    assert_eq!(rk_json(&schema, &["parked", "list"]).as_array().unwrap().len(), 1);
    // A filtered replay: the Spring record only; it keeps its progress in a group of
    // its own, so it hides nothing from the replay of all after it.
    let spring = rk_json(&schema, &["dlq", "replay", "--topic", &dlt, "--key", "9"]);
    assert_eq!((spring["redriven"].as_u64(), spring["skipped"].as_u64()), (Some(1), Some(2)), "{spring}");
    let first = rk_json(&schema, &["dlq", "replay", "--topic", &dlt, "--limit", "1", "--rate", "20"]);
    assert_eq!(first["redriven"], 1);
    // Resumable: the next replay goes on after the first one's committed progress.
    let rest = rk_json(&schema, &["dlq", "replay", "--topic", &dlt]);
    assert_eq!((rest["redriven"].as_u64(), rest["parked"].as_u64()), (Some(2), Some(0)), "{rest}");
    let refused = rk(&schema, &["parked", "purge"]);
    assert_eq!(refused.status.code(), Some(3), "a purge needs --yes");
    assert_eq!(rk_json(&schema, &["parked", "purge", "--yes"])["purged"], 1);
    assert!(rk_json(&schema, &["parked", "list"]).as_array().unwrap().is_empty());

    let notified =
        || async { sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notification").fetch_one(&pool).await.unwrap() };
    assert!(eventually(Duration::from_secs(60), || async { notified().await == 9 }).await, "all nine notified");
    tokio::time::sleep(Duration::from_secs(1)).await; // a duplicate would arrive meanwhile
    let duplicates = c.stats().duplicates();
    c.shutdown().await.unwrap();
    relay.shutdown().await.unwrap();
    server.stop().await;
    assert_eq!(notified().await, 9, "each payment notified once");
    let accepted = receiver.accepted();
    let replayed: Vec<Option<&u32>> = [4, 8, 9].iter().map(|p| accepted.get(p)).collect();
    assert_eq!(replayed, [Some(&1); 3], "the webhook got each replayed payment once");
    assert_eq!(duplicates, 2, "payments 4 and 9, each replayed twice, were applied once");

    let audit = rk_json(&schema, &["audit"]);
    let actions: Vec<(String, i64, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap().to_owned(),
                a["records"].as_i64().unwrap(),
                a["operator"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let op = || "night-shift".to_owned();
    assert_eq!(
        actions,
        [
            ("parked.purge".to_owned(), 1, op()),
            ("dlq.replay".to_owned(), 2, op()),
            ("dlq.replay".to_owned(), 1, op()),
            ("dlq.replay".to_owned(), 1, op()),
            ("parked.replay".to_owned(), 1, op()),
        ],
        "newest first; the dry run left none"
    );
}

/// `rk` on MySQL/MariaDB: the outbox backlog per topic and the retry of parked rows,
/// a parked dead letter listed, shown and purged, each operation audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rk_reads_and_repairs_a_mysql_database() {
    let (pool, url) = mysql_database().await;
    let run = |args: &[&str]| {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rk"))
            .args(&all)
            .env("DATABASE_URL", &url)
            .env("KAFKA_BROKERS", kafka().brokers())
            .env("RK_OPERATOR", "night-shift")
            .output()
            .expect("run rk");
        assert!(out.status.success(), "rk {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or_else(|e| panic!("rk {args:?}: no JSON ({e})"))
    };
    let kafka = kafka();
    // Two outbox rows of one topic, one a relay parked after the broker refused it.
    let topic = unique("mysql-rk");
    let mut tx = pool.begin().await.unwrap();
    for n in 1..=2 {
        let to = EnqueueOptions { topic: Some(topic.clone()), ..Default::default() };
        Outbox::new().enqueue_with(&mut tx, &Work { key: "k".into(), n }, to).await.unwrap();
    }
    tx.commit().await.unwrap();
    sqlx::query("UPDATE rk_outbox SET parked_at = UTC_TIMESTAMP(6), last_error = 'too large' ORDER BY seq LIMIT 1")
        .execute(&pool)
        .await
        .unwrap();
    // A record dead-lettered once and parked by a re-driver that allows no re-drive.
    let source = unique("mysql-rk-source");
    create_topics(&kafka, &source, 1).await;
    produce_work(&kafka, &source, uuid::Uuid::now_v7(), &Work { key: "p".into(), n: 7 }).await;
    sqlx::query("CREATE TABLE effects (message_id BINARY(16), `key` TEXT, n INT)").execute(&pool).await.unwrap();
    let recorder = Recorder::new(&source, &unique("group"), Mode::AlwaysTransient, 1);
    let c = ListenerContainer::builder(kafka.clone(), pool.clone()).handler(recorder).build().unwrap().spawn();
    assert!(eventually(Duration::from_secs(30), || async { c.stats().dead_lettered() == 1 }).await);
    c.shutdown().await.unwrap();
    let redriver = DeadLetterRedriver::builder(kafka.clone(), pool.clone())
        .topic(format!("{source}.DLQ"))
        .group_id(unique("redrive"))
        .max_redrives(0)
        .build()
        .unwrap();
    assert_eq!(redriver.redrive_once().await.unwrap().parked, 1);

    let status = run(&["outbox", "status"]);
    assert_eq!(
        (status["pending"].as_u64(), status["parked"].as_u64(), status["parked_dead_letters"].as_u64()),
        (Some(1), Some(1), Some(1)),
        "{status}"
    );
    assert_eq!(status["topics"][0]["topic"].as_str(), Some(topic.as_str()));
    assert!(status["oldest_pending_age_secs"].as_f64().is_some_and(|s| (0.0..60.0).contains(&s)), "{status}");
    assert_eq!(run(&["outbox", "retry", "--topic", &topic])["retried"], 1);
    assert_eq!(run(&["outbox", "status"])["pending"], 2);

    let parked = run(&["parked", "list"]);
    let parked = parked.as_array().unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0]["original_topic"].as_str(), Some(source.as_str()));
    let one = run(&["parked", "show", &parked[0]["id"].to_string()]);
    assert_eq!((one["key"].as_str(), one["payload"]["json"]["n"].as_i64()), (Some("p"), Some(7)), "{one}");
    assert_eq!(run(&["parked", "purge", "--yes"])["purged"], 1);
    assert!(run(&["parked", "list"]).as_array().unwrap().is_empty());
    let audit = run(&["audit"]);
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["parked.purge", "outbox.retry"]);
    assert!(audit.as_array().unwrap().iter().all(|a| a["operator"] == "night-shift"));
}
