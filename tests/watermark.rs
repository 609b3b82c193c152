//! Deduplication at the cost of a watermark, against real PostgreSQL and the
//! Kafka-protocol broker: a relay with sequence numbers and consumers in watermark mode.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::message::{Headers, Message, OwnedMessage};
use reliable_kafka::{headers, DeadLetterRedriver, EnqueueOptions, ListenerContainer, Outbox, OutboxRelay};
use reliable_kafka_tests::*;

/// Enqueues `n` rows of `keys` keys on `topic`, committed in transactions of 10.
async fn enqueue(pool: &sqlx::PgPool, topic: &str, n: u32, keys: u32) {
    let outbox = Outbox::new();
    let options = EnqueueOptions { topic: Some(topic.to_owned()), ..Default::default() };
    for chunk in 0..n.div_ceil(10) {
        let mut tx = pool.begin().await.unwrap();
        for i in chunk * 10..((chunk + 1) * 10).min(n) {
            outbox.enqueue_with(&mut tx, &Work { key: format!("k{}", i % keys), n: i }, options.clone()).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
}

fn relay(kafka: &reliable_kafka::KafkaConfig, pool: &sqlx::PgPool) -> OutboxRelay {
    OutboxRelay::builder(kafka.clone(), pool.clone()).batch_size(25).sequence_numbers(true).build().unwrap()
}

/// Runs `relay` until it has published `n` rows: a batch whose producer stopped with a
/// fatal error (tansu answers some produce requests with an unknown error) ends a
/// drain early, and the next one sends the rows again from a new producer.
async fn drain(relay: &OutboxRelay, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut published = 0;
    while published < n {
        assert!(std::time::Instant::now() < deadline, "{published} of {n} rows published in 30 s");
        published += relay.drain().await.unwrap().published;
    }
    assert_eq!(published, n);
}

/// A container in watermark mode (batches of up to 50) on `topic` until it has taken
/// `copies` records, processed or skipped as duplicates.
async fn consume_in_watermark_mode(
    kafka: &reliable_kafka::KafkaConfig,
    pool: &sqlx::PgPool,
    topic: &str,
    group: &str,
    copies: u64,
) {
    let c = ListenerContainer::builder(kafka.clone(), pool.clone())
        .handler(Recorder::new(topic, group, Mode::Succeed, 1))
        .max_batch(50)
        .watermark_dedup(true)
        .build()
        .unwrap()
        .spawn();
    let taken =
        eventually(Duration::from_secs(60), || async { c.stats().processed() + c.stats().duplicates() == copies })
            .await;
    c.shutdown().await.unwrap();
    assert!(taken, "{copies} records taken");
}

/// Each record's (source, number).
fn numbers(msgs: &[OwnedMessage]) -> Vec<(i32, String, i64)> {
    msgs.iter()
        .map(|m| {
            let v = m.headers().and_then(|h| h.iter().find(|h| h.key == headers::RELAY_SEQ)).and_then(|h| h.value);
            let v = String::from_utf8(v.expect("rk-relay-seq on every record").to_vec()).unwrap();
            let (source, n) = v.rsplit_once(':').unwrap();
            (m.partition(), source.to_owned(), n.parse().unwrap())
        })
        .collect()
}

async fn dedup_rows(pool: &sqlx::PgPool, group: &str) -> i64 {
    count(pool, &format!("SELECT count(*) FROM rk_processed_messages WHERE consumer_group = '{group}'")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_sent_twice_are_applied_once_by_watermark_without_deduplication_rows() {
    let (pool, _schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    let kafka = kafka();
    let topic = unique("watermark");
    create_topics(&kafka, &topic, 2).await;
    enqueue(&pool, &topic, 60, 6).await;
    let relay = relay(&kafka, &pool);
    drain(&relay, 60).await;
    // A relay that died before marking: every row goes out again, with its number.
    sqlx::query("UPDATE rk_outbox SET delivered_at = NULL").execute(&pool).await.unwrap();
    drain(&relay, 60).await;
    // 120 copies, more if a producer stopped with a fatal error after writing some.
    let msgs = read_topic(&kafka, &topic, 120, Duration::from_secs(30), Duration::from_millis(500)).await;
    assert!(msgs.len() >= 120, "{} records", msgs.len());
    let nums = numbers(&msgs);
    let source = nums[0].1.clone();
    assert!(nums.iter().all(|(_, s, _)| *s == source), "one source: one table, one shard");
    // Every copy of a row carries the row's one number, and in each partition a row's
    // first copy comes after no higher number.
    let mut of_row: HashMap<String, i64> = HashMap::new();
    let mut highest: HashMap<i32, i64> = HashMap::new();
    for (m, (p, _, n)) in msgs.iter().zip(&nums) {
        let id = header(m, headers::MESSAGE_ID).expect("message id");
        let top = highest.entry(*p).or_insert(0);
        match of_row.insert(id.clone(), *n) {
            Some(kept) => assert_eq!(kept, *n, "row {id} sent again with another number"),
            None => assert!(*n > *top, "partition {p}: first copy of {id} numbered {n} after {top}"),
        }
        *top = (*top).max(*n);
    }
    assert_eq!(of_row.len(), 60, "every row published");
    // A record without a number (another producer): the deduplication row.
    let plain = uuid::Uuid::now_v7();
    produce_work_to(&kafka, &topic, 0, plain, &Work { key: "plain".into(), n: 1000 }).await;
    produce_work_to(&kafka, &topic, 0, plain, &Work { key: "plain".into(), n: 1000 }).await;

    // Watermarks known before (as after the first batch of each): no bootstrap rows.
    let group = unique("group");
    for p in 0..2 {
        sqlx::query("INSERT INTO rk_watermarks (consumer_group, topic, kafka_partition, source, seq) VALUES ($1, $2, $3, $4, 0)")
            .bind(&group)
            .bind(&topic)
            .bind(p)
            .bind(&source)
            .execute(&pool)
            .await
            .unwrap();
    }
    consume_in_watermark_mode(&kafka, &pool, &topic, &group, msgs.len() as u64 + 2).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, 61, "each row and the plain record once");
    assert_eq!(count(&pool, "SELECT count(DISTINCT message_id) FROM effects").await, 61);
    assert_eq!(dedup_rows(&pool, &group).await, 1, "only the record without a number has a deduplication row");
    let marks: Vec<(i32, i64)> =
        sqlx::query_as("SELECT kafka_partition, seq FROM rk_watermarks WHERE consumer_group = $1 ORDER BY 1")
            .bind(&group)
            .fetch_all(&pool)
            .await
            .unwrap();
    let highest: HashMap<i32, i64> = nums.iter().fold(HashMap::new(), |mut m, (p, _, n)| {
        let e = m.entry(*p).or_insert(0);
        *e = (*e).max(*n);
        m
    });
    assert_eq!(marks, vec![(0, highest[&0]), (1, highest[&1])], "each partition's mark is its highest number");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_watermarks_on_applies_nothing_twice_that_was_processed_with_rows() {
    let (pool, _schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    let kafka = kafka();
    let topic = unique("watermark-on");
    create_topics(&kafka, &topic, 1).await;
    enqueue(&pool, &topic, 20, 4).await;
    let relay = relay(&kafka, &pool);
    drain(&relay, 20).await;
    let group = unique("group");
    // Row mode first.
    let rows = ListenerContainer::builder(kafka.clone(), pool.clone())
        .handler(Recorder::new(&topic, &group, Mode::Succeed, 1))
        .max_batch(50)
        .build()
        .unwrap()
        .spawn();
    assert!(eventually(Duration::from_secs(60), || async { rows.stats().processed() == 20 }).await);
    rows.shutdown().await.unwrap();
    // The relay sends everything again; the group, now in watermark mode, has no mark
    // yet: the deduplication rows of row mode still count.
    sqlx::query("UPDATE rk_outbox SET delivered_at = NULL").execute(&pool).await.unwrap();
    drain(&relay, 20).await;
    enqueue(&pool, &topic, 5, 4).await;
    drain(&relay, 5).await;
    consume_in_watermark_mode(&kafka, &pool, &topic, &group, 25).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, 25, "20 + 5 new, none twice");
    assert_eq!(count(&pool, "SELECT count(DISTINCT message_id) FROM effects").await, 25);
    let mark: i64 = sqlx::query_scalar("SELECT seq FROM rk_watermarks WHERE consumer_group = $1")
        .bind(&group)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mark, 25, "the mark is the last number of the 25 rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_record_below_the_watermark_is_applied() {
    let (pool, _schema) = isolated_pool().await;
    create_effects_table(&pool).await;
    let kafka = kafka();
    let topic = unique("watermark-redrive");
    create_topics(&kafka, &topic, 1).await;
    enqueue(&pool, &topic, 10, 10).await;
    drain(&relay(&kafka, &pool), 10).await;
    let group = unique("group");
    // The handler fails its first call for good (1 attempt): the first record is
    // dead-lettered and the nine after it raise the watermark past it.
    let c = ListenerContainer::builder(kafka.clone(), pool.clone())
        .handler(Recorder::new(&topic, &group, Mode::FailCalls(1), 1))
        .watermark_dedup(true)
        .build()
        .unwrap()
        .spawn();
    assert!(
        eventually(Duration::from_secs(60), || async { c.stats().processed() == 9 && c.stats().dead_lettered() == 1 })
            .await
    );
    let mark: i64 = sqlx::query_scalar("SELECT seq FROM rk_watermarks WHERE consumer_group = $1")
        .bind(&group)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mark, 10);
    let dlq = format!("{topic}.DLQ");
    let dead = read_topic(&kafka, &dlq, 1, Duration::from_secs(20), Duration::from_millis(200)).await;
    assert!(header(&dead[0], headers::RELAY_SEQ).is_some(), "the dead letter keeps the number for the reader");
    let redriver = DeadLetterRedriver::builder(kafka.clone(), pool.clone())
        .topic(&dlq)
        .group_id(unique("redrive"))
        .build()
        .unwrap();
    assert_eq!(redriver.redrive_once().await.unwrap().redriven, 1);
    assert!(
        eventually(Duration::from_secs(30), || async { c.stats().processed() == 10 }).await,
        "re-driven record applied"
    );
    c.shutdown().await.unwrap();
    assert_eq!(count(&pool, "SELECT count(DISTINCT message_id) FROM effects").await, 10, "every row applied");
    let msgs = read_topic(&kafka, &topic, 11, Duration::from_secs(20), Duration::from_millis(200)).await;
    let redriven = msgs.last().expect("records");
    assert_eq!(header(redriven, headers::REDRIVE_COUNT).as_deref(), Some("1"), "the last record is the re-driven copy");
    assert_eq!(header(redriven, headers::RELAY_SEQ), None, "the re-driven copy has no number");
    assert_eq!(dedup_rows(&pool, &group).await, 1, "the re-driven record went through its deduplication row");
}

/// The invalid setting's message (the error's source).
fn named(e: reliable_kafka::Error) -> String {
    std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
}

#[tokio::test]
async fn settings_the_numbering_cannot_work_with_are_refused_by_name() {
    let lite = sqlite_pool().await;
    let e = named(OutboxRelay::builder(kafka(), lite.clone()).sequence_numbers(true).build().unwrap_err());
    assert!(e.contains("sequence_numbers"), "{e}");
    let e = ListenerContainer::builder(kafka(), lite)
        .handler(Recorder::new("t", "g", Mode::Succeed, 1))
        .watermark_dedup(true)
        .build()
        .unwrap_err();
    assert!(named(e).contains("watermark_dedup"));
    let (pool, _schema) = isolated_pool().await;
    for key in ["message.timeout.ms", "enable.gapless.guarantee"] {
        let kafka = kafka().set(key, "1");
        let e = named(OutboxRelay::builder(kafka, pool.clone()).sequence_numbers(true).build().unwrap_err());
        assert!(e.contains(key), "{key}: {e}");
    }
}
