//! Outbox and relay against real PostgreSQL and the Kafka-protocol broker
//! (`KAFKA_BROKERS`, tansu in CI).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use rdkafka::message::Message;
use reliable_kafka::{headers, EnqueueOptions, Event, Outbox, OutboxRelay};
use reliable_kafka_tests::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "unused.by.tests", key = key)]
struct Step {
    key: String,
    n: u32,
}

fn to(topic: &str) -> EnqueueOptions {
    EnqueueOptions { topic: Some(topic.to_owned()), ..Default::default() }
}

/// Decodes the published `Step`s, in read order.
fn steps(msgs: &[rdkafka::message::OwnedMessage]) -> Vec<Step> {
    msgs.iter().map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_publish_each_committed_row_once_in_key_order() {
    let (pool, _schema) = isolated_pool().await;
    let kafka = kafka();
    let topic = unique("outbox-concurrent");
    create_topics(&kafka, &topic, 3).await;
    let relay = OutboxRelay::builder(kafka.clone(), pool.clone()).batch_size(50).build().unwrap().spawn();

    // 8 writers, each owning 2 keys, 25 transactions each of 1..=3 rows; every 5th
    // transaction rolls back. Per key, n counts up in commit order.
    let mut writers = Vec::new();
    for w in 0..8u32 {
        let pool = pool.clone();
        let topic = topic.clone();
        writers.push(tokio::spawn(async move {
            let outbox = Outbox::new();
            let mut next: HashMap<String, u32> = HashMap::new();
            let mut committed = 0usize;
            for t in 0..25u32 {
                let key = format!("w{w}-k{}", t % 2);
                let rows = 1 + t % 3;
                let mut tx = pool.begin().await.unwrap();
                let start = *next.get(&key).unwrap_or(&0);
                for i in 0..rows {
                    outbox.enqueue_with(&mut tx, &Step { key: key.clone(), n: start + i }, to(&topic)).await.unwrap();
                }
                if t % 5 == 4 {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                    next.insert(key, start + rows);
                    committed += rows as usize;
                }
            }
            committed
        }));
    }
    let mut expected = 0;
    for w in writers {
        expected += w.await.unwrap();
    }

    let msgs = read_topic(&kafka, &topic, expected, Duration::from_secs(60), Duration::from_secs(2)).await;
    relay.shutdown().await.expect("graceful shutdown");
    assert_eq!(msgs.len(), expected, "every committed row published exactly once");
    let ids = count_by_header(&msgs, headers::MESSAGE_ID);
    assert_eq!(ids.len(), expected, "no message id twice");
    // Per key: 0, 1, 2, ... with no gap (rolled-back rows never appear) and no reordering.
    let mut per_key: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for s in steps(&msgs) {
        per_key.entry(s.key).or_default().push(s.n);
    }
    for (key, ns) in per_key {
        let want: Vec<u32> = (0..ns.len() as u32).collect();
        assert_eq!(ns, want, "order of key {key}");
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM rk_outbox WHERE delivered_at IS NULL").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_transaction_publishes_nothing() {
    let (pool, _schema) = isolated_pool().await;
    let kafka = kafka();
    let topic = unique("outbox-rollback");
    create_topics(&kafka, &topic, 1).await;
    let outbox = Outbox::new();
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_with(&mut tx, &Step { key: "a".into(), n: 0 }, to(&topic)).await.unwrap();
    tx.rollback().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_with(&mut tx, &Step { key: "a".into(), n: 1 }, to(&topic)).await.unwrap();
    tx.commit().await.unwrap();

    let relay = OutboxRelay::builder(kafka.clone(), pool.clone()).build().unwrap();
    let batch = relay.relay_once().await.unwrap();
    assert_eq!(batch.published, 1);
    let msgs = read_topic(&kafka, &topic, 1, Duration::from_secs(30), Duration::from_secs(2)).await;
    let got: Vec<u32> = steps(&msgs).into_iter().map(|s| s.n).collect();
    assert_eq!(got, [1], "only the committed row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_late_is_not_skipped() {
    let (pool, _schema) = isolated_pool().await;
    let kafka = kafka();
    let topic = unique("outbox-late");
    create_topics(&kafka, &topic, 1).await;
    let outbox = Outbox::new();
    let relay = OutboxRelay::builder(kafka.clone(), pool.clone()).build().unwrap();

    // The early transaction takes the lower seq but commits after a later one.
    let mut early = pool.begin().await.unwrap();
    outbox.enqueue_with(&mut early, &Step { key: "early".into(), n: 0 }, to(&topic)).await.unwrap();
    let mut late = pool.begin().await.unwrap();
    outbox.enqueue_with(&mut late, &Step { key: "late".into(), n: 0 }, to(&topic)).await.unwrap();
    late.commit().await.unwrap();
    assert_eq!(relay.relay_once().await.unwrap().published, 1, "the committed row goes first");
    early.commit().await.unwrap();
    assert_eq!(relay.relay_once().await.unwrap().published, 1, "the late committer is published too");

    let msgs = read_topic(&kafka, &topic, 2, Duration::from_secs(30), Duration::from_secs(1)).await;
    let keys: Vec<String> = steps(&msgs).into_iter().map(|s| s.key).collect();
    assert_eq!(keys, ["late", "early"]);
}

/// A service that picks its schema in the pool's `after_connect` (as
/// `.ci/external-service` does), not in the connect options: the relay's lease session
/// must see that schema too. A lease opened from the pool's connect options locked and
/// claimed `public.rk_outbox` (or failed), and the service's rows stayed pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_on_a_pool_whose_after_connect_sets_the_schema_publishes_its_rows() {
    let (_isolated, schema) = isolated_pool().await;
    let set = format!("SET search_path TO {schema}");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .after_connect(move |conn, _| {
            let set = set.clone();
            Box::pin(async move { sqlx::query(&set).execute(conn).await.map(|_| ()) })
        })
        .connect(&database_url())
        .await
        .unwrap();
    let kafka = kafka();
    let topic = unique("outbox-after-connect");
    create_topics(&kafka, &topic, 1).await;
    let mut tx = pool.begin().await.unwrap();
    for n in 0..3 {
        Outbox::new().enqueue_with(&mut tx, &Step { key: "k".into(), n }, to(&topic)).await.unwrap();
    }
    tx.commit().await.unwrap();

    let relay = OutboxRelay::builder(kafka.clone(), pool.clone()).build().unwrap();
    assert_eq!(relay.relay_once().await.unwrap().published, 3, "the rows of the pool's schema");
    assert_eq!(count(&pool, "SELECT count(*) FROM rk_outbox WHERE delivered_at IS NULL").await, 0);
    let msgs = read_topic(&kafka, &topic, 3, Duration::from_secs(30), Duration::from_secs(1)).await;
    assert_eq!(steps(&msgs).into_iter().map(|s| s.n).collect::<Vec<_>>(), [0, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relay_instances_publish_each_row_once() {
    let (pool, _schema) = isolated_pool().await;
    let kafka = kafka();
    let topic = unique("outbox-two-relays");
    create_topics(&kafka, &topic, 3).await;
    let a = OutboxRelay::builder(kafka.clone(), pool.clone()).batch_size(20).build().unwrap().spawn();
    let b = OutboxRelay::builder(kafka.clone(), pool.clone()).batch_size(20).build().unwrap().spawn();
    let outbox = Outbox::new();
    let n = 600u32;
    for chunk in 0..(n / 20) {
        let mut tx = pool.begin().await.unwrap();
        for i in 0..20 {
            let seq = chunk * 20 + i;
            outbox.enqueue_with(&mut tx, &Step { key: format!("k{}", seq % 7), n: seq }, to(&topic)).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let msgs = read_topic(&kafka, &topic, n as usize, Duration::from_secs(60), Duration::from_secs(2)).await;
    let (pa, pb) = (a.stats().published(), b.stats().published());
    a.shutdown().await.expect("graceful shutdown");
    b.shutdown().await.expect("graceful shutdown");
    assert_eq!(msgs.len(), n as usize);
    assert_eq!(pa + pb, u64::from(n), "the instances together marked each row once (a={pa}, b={pb})");
    let distinct: HashSet<u32> = steps(&msgs).into_iter().map(|s| s.n).collect();
    assert_eq!(distinct.len(), n as usize);
    // Per key the relay kept insertion order.
    let mut last: HashMap<String, u32> = HashMap::new();
    for s in steps(&msgs) {
        if let Some(prev) = last.insert(s.key.clone(), s.n) {
            assert!(prev < s.n, "key {} went {prev} then {}", s.key, s.n);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_rows_are_deleted_after_retention() {
    let (pool, _schema) = isolated_pool().await;
    let kafka = kafka();
    let topic = unique("outbox-retention");
    create_topics(&kafka, &topic, 1).await;
    let outbox = Outbox::new();
    let mut tx = pool.begin().await.unwrap();
    for n in 0..5 {
        outbox.enqueue_with(&mut tx, &Step { key: "k".into(), n }, to(&topic)).await.unwrap();
    }
    tx.commit().await.unwrap();

    let keep = OutboxRelay::builder(kafka.clone(), pool.clone()).retention(Duration::from_secs(3600)).build().unwrap();
    assert_eq!(keep.relay_once().await.unwrap().published, 5);
    assert_eq!(keep.cleanup_once().await.unwrap(), 0, "rows younger than the retention stay");
    assert_eq!(count(&pool, "SELECT count(*) FROM rk_outbox WHERE delivered_at IS NOT NULL").await, 5);

    let short = OutboxRelay::builder(kafka.clone(), pool.clone()).retention(Duration::from_millis(1)).build().unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(short.cleanup_once().await.unwrap(), 5);
    assert_eq!(count(&pool, "SELECT count(*) FROM rk_outbox").await, 0);
}

#[tokio::test]
async fn invalid_relay_settings_name_the_key() {
    let (pool, _schema) = isolated_pool().await;
    let cases: Vec<(reliable_kafka::OutboxRelayBuilder, &str)> = vec![
        (OutboxRelay::builder(kafka(), pool.clone()).batch_size(0), "batch_size"),
        (OutboxRelay::builder(kafka(), pool.clone()).poll_interval(Duration::ZERO), "poll_interval"),
        (OutboxRelay::builder(kafka(), pool.clone()).max_send_attempts(0), "max_send_attempts"),
        (OutboxRelay::builder(kafka(), pool.clone()).table("rk_outbox; DROP TABLE x"), "outbox_table"),
    ];
    for (builder, key) in cases {
        let err = builder.build().expect_err("must be rejected");
        let msg = format!("{}", std::error::Error::source(&err).unwrap());
        assert!(msg.contains(key), "{msg}");
    }
}
