//! Listener container throughput (records/s): a `ListenerContainer` draining records
//! produced beforehand to a fresh topic (8 partitions) of librdkafka's in-process mock
//! cluster (`EmbeddedKafka`), with a fresh consumer group. Every record is deduplicated
//! and written as one `effects` row in the handler's transaction (`handle_batch`: one
//! multi-row `unnest` insert per batch) on PostgreSQL (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`, in a fresh schema).
//!
//! Benchmarks `consumer/max_batch={1,100,500}/partition_concurrency={1,4}`. Criterion
//! reports the time per iteration and the throughput in elements/s, here records/s.
//! One iteration is 20,000 records of about 60 bytes, or 5,000 at `max_batch` 1, which
//! runs at a few thousand records/s. The records are produced before the clock starts.
//! The clock starts when the container receives its first record and stops when every
//! record is processed. So the group join is not counted (on the mock it takes more
//! than 3 s: the broker's initial rebalance delay), as in the `ratios` command. Records
//! processed before the clock started are accounted for by scaling the time to the
//! whole iteration. 10 samples of one iteration each. Criterion warns that 10 samples
//! do not fit the target time. That is expected: each iteration also spends about 4 s
//! untimed on producing, the group join and shutdown.
//!
//! `cargo bench -p reliable-kafka-benches --bench consumer` (about 5 minutes on 2 cores)

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use reliable_kafka::{
    ContainerHandle, ContainerStats, EmbeddedKafka, KafkaConfig, ListenerContainer, DEFAULT_PROCESSED_TABLE,
};
use reliable_kafka_benches::Bench;
use reliable_kafka_tests::{create_effects_table, isolated_pool, produce_works, test_settings, unique, Work};
use sqlx::PgPool;
use uuid::Uuid;

/// Partitions of each topic.
const PARTITIONS: i32 = 8;
/// Longest time one iteration may take, group join included, before the bench fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// One benchmark's settings.
#[derive(Clone, Copy)]
struct Run {
    records: u64,
    max_batch: usize,
    partition_concurrency: usize,
}

/// Polls `c`'s counters every millisecond until `done`; panics if the container
/// stops or `deadline` passes.
async fn wait_until(c: &ContainerHandle, deadline: Instant, done: impl Fn(&ContainerStats) -> bool) {
    while !done(c.stats()) {
        assert!(!c.is_finished(), "the container stopped: {:?}", c.stats());
        assert!(Instant::now() < deadline, "the container stalled: {:?}", c.stats());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One iteration: produces `run.records` to a fresh topic (untimed), drains them with
/// a fresh container and group, and returns the time the draining took.
async fn consume(pool: &PgPool, cluster: &EmbeddedKafka, kafka: &KafkaConfig, run: Run) -> Duration {
    // Every iteration starts from empty tables (untimed).
    sqlx::query(&format!("TRUNCATE effects, {DEFAULT_PROCESSED_TABLE}")).execute(pool).await.expect("truncate");
    let topic = unique("bench-consumer");
    cluster.create_topics(&[(topic.as_str(), PARTITIONS)]).expect("create topic");
    let items: Vec<(Uuid, Work)> =
        (0..run.records as u32).map(|n| (Uuid::now_v7(), Work { key: format!("k{}", n % 1000), n })).collect();
    produce_works(kafka, &topic, &items).await;

    // The idempotent handler: one `effects` row per record, in the container's
    // transaction, one multi-row insert per batch.
    let handler = Bench { topic, group: unique("bench-consumer"), insert: true, per_record: false };
    let container = ListenerContainer::builder(kafka.clone(), pool.clone())
        .max_batch(run.max_batch)
        .partition_concurrency(run.partition_concurrency)
        .handler(handler)
        .build()
        .expect("container")
        .spawn();
    let deadline = Instant::now() + STALL_TIMEOUT;
    // The group join is not measured: the clock starts with the first record.
    wait_until(&container, deadline, |s| s.received() > 0).await;
    let start = Instant::now();
    let before = container.stats().processed();
    wait_until(&container, deadline, |s| s.processed() + s.duplicates() >= run.records).await;
    let elapsed = start.elapsed();
    container.shutdown().await.expect("shutdown");
    // The records processed before the clock started took no measured time: scale the
    // measured rate to the whole iteration.
    elapsed.mul_f64(run.records as f64 / run.records.saturating_sub(before).max(1) as f64)
}

fn consumer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    // `isolated_pool` has 10 connections: at least partition_concurrency + 2.
    let (pool, schema) = rt.block_on(async {
        let (pool, schema) = isolated_pool().await;
        create_effects_table(&pool).await;
        (pool, schema)
    });
    let mut group = c.benchmark_group("consumer");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
    for max_batch in [1usize, 100, 500] {
        for partition_concurrency in [1usize, 4] {
            let records = if max_batch == 1 { 5_000 } else { 20_000 };
            let run = Run { records, max_batch, partition_concurrency };
            // A cluster per benchmark: the mock keeps every topic in memory until dropped.
            let cluster = EmbeddedKafka::start(1).expect("mock cluster");
            let kafka = test_settings(cluster.config()).set("fetch.wait.max.ms", "5");
            group.throughput(Throughput::Elements(records));
            let id = BenchmarkId::new(
                format!("max_batch={max_batch}"),
                format!("partition_concurrency={partition_concurrency}"),
            );
            group.bench_function(id, |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (pool, cluster, kafka) = (&pool, &cluster, &kafka);
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += consume(pool, cluster, kafka, run).await;
                        }
                        total
                    }
                })
            });
            drop(cluster);
        }
    }
    group.finish();
    rt.block_on(async {
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.expect("drop schema");
    });
}

criterion_group!(benches, consumer);
criterion_main!(benches);
