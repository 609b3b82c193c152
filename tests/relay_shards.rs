//! The sharded relay against real PostgreSQL and the Kafka-protocol broker: three relay
//! processes share one outbox table by shards, and one is SIGKILLed mid-run.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use reliable_kafka::{EnqueueOptions, Event, Outbox};
use reliable_kafka_tests::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "unused.by.tests", key = key)]
struct Step {
    key: String,
    n: u32,
}

const SHARDS: u32 = 8;

/// The shards each relay process holds now, by its `application_name`.
async fn shards_by_member(pool: &sqlx::PgPool) -> HashMap<String, Vec<i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT a.application_name, l.objid::int8 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = 'rk_outbox'::regclass::oid \
         AND l.objid::int8 < 1000000 ORDER BY 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out: HashMap<String, Vec<i64>> = HashMap::new();
    for (name, shard) in rows {
        out.entry(name).or_default().push(shard);
    }
    out
}

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, timeout: Duration, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn relay(schema: &str, name: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rk-test-relay"))
        .args([schema, &SHARDS.to_string(), name])
        .spawn()
        .expect("spawn relay")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sharded_relays_one_killed_lose_nothing_and_keep_key_order() {
    let (pool, schema) = isolated_pool().await;
    let kafka = kafka();
    let topic = unique("outbox-shards");
    // One shard per partition: a partition's records come from one relay at a time.
    create_topics(&kafka, &topic, SHARDS as i32).await;
    let mut children: Vec<Child> = ["relay-a", "relay-b", "relay-c"].iter().map(|n| relay(&schema, n)).collect();
    wait_for("three members splitting the shards", Duration::from_secs(30), || async {
        let held = shards_by_member(&pool).await;
        held.len() == 3 && held.values().map(Vec::len).sum::<usize>() == SHARDS as usize
    })
    .await;
    let before = shards_by_member(&pool).await;
    let mut split: Vec<usize> = before.values().map(Vec::len).collect();
    split.sort_unstable();
    assert_eq!(split, [2, 3, 3], "each of 3 members holds its share of 8 shards: {before:?}");

    let outbox = Outbox::new();
    let options = EnqueueOptions { topic: Some(topic.clone()), ..Default::default() };
    let n = 3000u32;
    let (chunk, keys) = (30, 40);
    let mut victim_shards: Vec<i64> = Vec::new();
    for c in 0..(n / chunk) {
        let mut tx = pool.begin().await.unwrap();
        for i in 0..chunk {
            let seq = c * chunk + i;
            outbox
                .enqueue_with(&mut tx, &Step { key: format!("k{}", seq % keys), n: seq }, options.clone())
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        if c == n / chunk / 3 {
            // Mid-run: SIGKILL the member holding the most shards.
            let held = shards_by_member(&pool).await;
            let (name, shards) = held.iter().max_by_key(|(_, s)| s.len()).map(|(n, s)| (n.clone(), s.clone())).unwrap();
            let index = ["relay-a", "relay-b", "relay-c"].iter().position(|m| *m == name).unwrap();
            children[index].kill().unwrap();
            children[index].wait().unwrap();
            victim_shards = shards;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for("every row delivered", Duration::from_secs(90), || async {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM rk_outbox WHERE delivered_at IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
        pending == 0
    })
    .await;
    let after = shards_by_member(&pool).await;
    let msgs = read_topic(&kafka, &topic, n as usize, Duration::from_secs(60), Duration::from_secs(3)).await;
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }

    assert_eq!(after.len(), 2, "the survivors: {after:?}");
    assert_eq!(
        after.values().map(Vec::len).sum::<usize>(),
        SHARDS as usize,
        "the survivors took every shard: {after:?}"
    );
    let records: Vec<(i32, Step)> =
        msgs.iter().map(|m| (m.partition(), serde_json::from_slice(m.payload().unwrap()).unwrap())).collect();
    // No loss.
    let distinct: HashSet<u32> = records.iter().map(|(_, s)| s.n).collect();
    assert_eq!(distinct.len(), n as usize, "every row was published");
    // Duplicates only where the kill explains them: rows in flight on the killed
    // member (two batches of 50) of the shards it held, published again by their next owner.
    let mut seen: HashSet<u32> = HashSet::new();
    let duplicates: Vec<&(i32, Step)> = records.iter().filter(|(_, s)| !seen.insert(s.n)).collect();
    assert!(duplicates.len() <= 100, "{} duplicates, more than two batches", duplicates.len());
    for (partition, s) in &duplicates {
        assert!(
            victim_shards.contains(&i64::from(*partition)),
            "row {} duplicated on partition {partition}, not a shard of the killed member {victim_shards:?}",
            s.n
        );
    }
    // Per key, first deliveries in insertion order.
    let mut last: HashMap<&str, u32> = HashMap::new();
    let mut first: HashSet<u32> = HashSet::new();
    for (_, s) in &records {
        if !first.insert(s.n) {
            continue;
        }
        if let Some(prev) = last.insert(s.key.as_str(), s.n) {
            assert!(prev < s.n, "key {} went {prev} then {}", s.key, s.n);
        }
    }
    eprintln!(
        "sharded relays: {} records, {} duplicates, killed member held shards {victim_shards:?}",
        records.len(),
        duplicates.len()
    );
}

async fn relay_busy(pool: &sqlx::PgPool, shards: u32) -> bool {
    let relay = reliable_kafka::OutboxRelay::builder(kafka(), pool.clone()).shards(shards).build().unwrap();
    relay.relay_once().await.unwrap().lock_busy
}

/// Relays configured differently must not publish the same rows at once: an unsharded
/// relay excludes sharded ones and the reverse, and members of one shard count exclude
/// those of another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_of_one_table_with_different_shard_settings_exclude_each_other() {
    let (pool, _schema) = isolated_pool().await;
    let table_lock = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
                      AND objid = 'rk_outbox'::regclass::oid";
    let held = || async { sqlx::query_scalar::<_, i64>(table_lock).fetch_one(&pool).await.unwrap() > 0 };

    let unsharded = reliable_kafka::OutboxRelay::builder(kafka(), pool.clone()).build().unwrap().spawn();
    wait_for("the unsharded relay's lock", Duration::from_secs(10), held).await;
    assert!(relay_busy(&pool, 4).await, "a sharded relay waits while an unsharded one runs");
    assert!(relay_busy(&pool, 1).await, "a second unsharded relay waits");
    unsharded.shutdown().await.unwrap();
    wait_for("the lock released", Duration::from_secs(10), || async { !held().await }).await;

    let sharded = reliable_kafka::OutboxRelay::builder(kafka(), pool.clone()).shards(4).build().unwrap().spawn();
    let stats = sharded.stats();
    wait_for("the sharded relay's shards", Duration::from_secs(10), || {
        let n = stats.shards().len();
        async move { n == 4 }
    })
    .await;
    assert!(relay_busy(&pool, 1).await, "an unsharded relay waits while a sharded one runs");
    assert!(relay_busy(&pool, 8).await, "a member of another shard count waits");
    assert!(!relay_busy(&pool, 4).await, "a member of the same shard count joins");
    sharded.shutdown().await.unwrap();
}
