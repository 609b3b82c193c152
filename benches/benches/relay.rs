//! Outbox relay throughput (rows/s): `OutboxRelay::relay_once` draining pre-inserted
//! rows, real PostgreSQL (`DATABASE_URL`) and broker (`KAFKA_BROKERS`).
//!
//! `cargo bench -p reliable-kafka-benches --bench relay`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use reliable_kafka::{EnqueueOptions, Outbox, OutboxRelay};
use reliable_kafka_tests::{create_topics, isolated_pool, kafka, unique, Work};

const ROWS: u64 = 5_000;

fn relay(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (pool, topic) = rt.block_on(async {
        let (pool, _schema) = isolated_pool().await;
        let topic = unique("bench-relay");
        create_topics(&kafka(), &topic, 6).await;
        (pool, topic)
    });
    let mut group = c.benchmark_group("relay");
    group.throughput(Throughput::Elements(ROWS)).sample_size(10).measurement_time(Duration::from_secs(20));
    for batch in [100usize, 1000] {
        let relay =
            OutboxRelay::builder(kafka(), pool.clone()).batch_size(batch).retention(Duration::ZERO).build().unwrap();
        group.bench_function(format!("batch_{batch}"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (pool, topic, relay) = (pool.clone(), topic.clone(), &relay);
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        fill(&pool, &topic).await;
                        let start = Instant::now();
                        let mut left = ROWS as usize;
                        while left > 0 {
                            left -= relay.relay_once().await.unwrap().published;
                        }
                        total += start.elapsed();
                    }
                    total
                }
            })
        });
    }
    group.finish();
}

async fn fill(pool: &sqlx::PgPool, topic: &str) {
    let outbox = Outbox::new();
    let mut tx = pool.begin().await.unwrap();
    for n in 0..ROWS as u32 {
        let opts = EnqueueOptions { topic: Some(topic.to_owned()), ..Default::default() };
        outbox.enqueue_with(&mut tx, &Work { key: format!("k{}", n % 64), n }, opts).await.unwrap();
    }
    tx.commit().await.unwrap();
}

criterion_group!(benches, relay);
criterion_main!(benches);
