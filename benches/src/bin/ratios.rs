//! The performance ratios R1–R7 and R1w of `BENCHMARKS.md`, in one process, on the same
//! database and brokers: `cargo run --release -p reliable-kafka-benches --bin ratios`.
//!
//! PostgreSQL (`DATABASE_URL`) for every database figure; librdkafka's in-process mock
//! cluster (32 partitions) where the broker must not be the bottleneck (R1–R4, R6);
//! the TCP broker of `KAFKA_BROKERS` (tansu in CI) for end-to-end latency (R5).
//! Prints one line per ratio and writes the same as JSON (`--json PATH`, default
//! `ratios.json` in the build directory). At the end it builds and runs the peer
//! benchmark of `benches/peers` (P1 and P2 against RustStream; `--no-peers` skips it,
//! `--peers-only` runs only it). `--r1-only` stops after R1 and R1w, `--r4-only` and
//! `--r7-only` run that ratio alone. A measurement, never a test: nothing here asserts
//! a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use reliable_kafka::{
    headers, EmbeddedKafka, EnqueueOptions, EventHandler, HandlerContext, HandlerError, HandlerOptions, KafkaConfig,
    ListenerContainer, Outbox, OutboxRelay,
};
use reliable_kafka_benches::Bench;
use reliable_kafka_tests::{create_topics, isolated_pool, unique, Work};
use serde_json::json;
use uuid::Uuid;

const PARTITIONS: i32 = 32;

/// CPU seconds (user + system) of a process, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Pids of processes whose command line contains `needle`.
fn pids(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

/// CPU used by the client (this process), PostgreSQL and the TCP broker during `f`.
struct Cpu {
    client: f64,
    database: f64,
    broker: f64,
}

fn cpu_now() -> (f64, f64, f64) {
    let sum = |ps: Vec<u32>| ps.into_iter().filter_map(cpu_seconds).sum::<f64>();
    (cpu_seconds(std::process::id()).unwrap_or(0.0), sum(pids("postgres")), sum(pids("tansu")))
}

async fn measured<T>(f: impl std::future::Future<Output = T>) -> (T, Duration, Cpu) {
    let before = cpu_now();
    let start = Instant::now();
    let out = f.await;
    let wall = start.elapsed();
    let after = cpu_now();
    (out, wall, Cpu { client: after.0 - before.0, database: after.1 - before.1, broker: after.2 - before.2 })
}

/// Produces `n` `Work` records with a valid envelope (distinct message ids).
fn produce(brokers: &str, topic: &str, n: usize) {
    produce_with(brokers, topic, n, false)
}

/// As [`produce`]; `numbered` adds the relay's sequence number (`rk-relay-seq`, one
/// source, numbers 1..=n in produce order), as a relay with sequence numbers writes it.
fn produce_with(brokers: &str, topic: &str, n: usize, numbered: bool) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    for i in 0..n {
        let id = Uuid::now_v7().to_string();
        let payload = serde_json::to_vec(&Work { key: format!("k{}", i % 1000), n: i as u32 }).unwrap();
        let key = format!("k{}", i % 1000);
        let mut h = OwnedHeaders::new()
            .insert(Header { key: headers::MESSAGE_ID, value: Some(&id) })
            .insert(Header { key: headers::EVENT_TYPE, value: Some("Work") });
        if numbered {
            h = h.insert(Header { key: headers::RELAY_SEQ, value: Some(&format!("bench/0:{}", i + 1)) });
        }
        let mut record = BaseRecord::to(topic).key(&key).payload(&payload).headers(h);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    producer.poll(Duration::from_millis(10));
                    record = r;
                }
            }
        }
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

/// Raw rdkafka: a `BaseConsumer` draining `n` records; the time from the first record
/// to the last (the group join is not counted, as for the container).
fn raw_drain(brokers: &str, topic: &str, n: usize) -> Duration {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("raw"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).unwrap();
    let mut got = 0;
    let mut first = None;
    while got < n {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            got += 1;
        }
    }
    first.map(|t| t.elapsed()).unwrap_or_default()
}

/// Raw rdkafka committing one PostgreSQL transaction per `batch` records (an upsert
/// of the partition's next offset, the least an exactly-once effect costs): the time
/// from the first record to the last commit.
fn raw_tx_drain(
    brokers: &str,
    topic: &str,
    n: usize,
    batch: usize,
    pool: sqlx::PgPool,
    rt: tokio::runtime::Handle,
) -> Duration {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("raw-tx"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).unwrap();
    rt.block_on(
        sqlx::query("CREATE TABLE IF NOT EXISTS raw_offsets (topic text, kafka_partition int, next_offset bigint, PRIMARY KEY (topic, kafka_partition))")
            .execute(&pool),
    )
    .unwrap();
    let (mut got, mut first) = (0, None);
    let mut pending: Vec<(i32, i64)> = Vec::new();
    while got < n {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            use rdkafka::Message;
            first.get_or_insert_with(Instant::now);
            got += 1;
            pending.push((m.partition(), m.offset() + 1));
        }
        if pending.len() >= batch || (got == n && !pending.is_empty()) {
            let (parts, offsets): (Vec<i32>, Vec<i64>) = std::mem::take(&mut pending).into_iter().unzip();
            rt.block_on(async {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query(
                    "INSERT INTO raw_offsets SELECT $1, p, max(o) FROM unnest($2::int4[], $3::int8[]) AS u(p, o) GROUP BY p \
                     ON CONFLICT (topic, kafka_partition) DO UPDATE SET next_offset = excluded.next_offset",
                )
                .bind(topic)
                .bind(&parts)
                .bind(&offsets)
                .execute(&mut *tx)
                .await
                .unwrap();
                tx.commit().await.unwrap();
            });
        }
    }
    first.map(|t| t.elapsed()).unwrap_or_default()
}

/// The container draining `n` records of `topic` with `max_batch`; records/s.
/// How the consumer of a measurement is set up.
#[derive(Clone, Copy)]
struct Setup {
    /// `max_batch`.
    batch: usize,
    /// The handler inserts a business row per record.
    insert: bool,
    /// ... one statement per record even in batches.
    per_record: bool,
    /// `partition_concurrency`.
    partitions: usize,
    /// `watermark_dedup`.
    watermark: bool,
}

impl Setup {
    const fn new(batch: usize, insert: bool) -> Self {
        Setup { batch, insert, per_record: false, partitions: 1, watermark: false }
    }
}

async fn container_rate(pool: &sqlx::PgPool, kafka: &KafkaConfig, topic: &str, n: usize, setup: Setup) -> (f64, Cpu) {
    let Setup { batch, insert, per_record, partitions, watermark } = setup;
    let handler = Bench { topic: topic.to_owned(), group: unique("bench"), insert, per_record };
    let c = ListenerContainer::builder(kafka.clone(), pool.clone())
        .max_batch(batch)
        .partition_concurrency(partitions)
        .watermark_dedup(watermark)
        .handler(handler)
        .build()
        .expect("container")
        .spawn();
    // Group join: wait for the first record before the clock starts.
    while c.stats().received() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let start_count = c.stats().processed();
    let ((), wall, cpu) = measured(async {
        while c.stats().processed() + c.stats().duplicates() < n as u64 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    c.shutdown().await.expect("shutdown");
    ((n as u64 - start_count) as f64 / wall.as_secs_f64(), cpu)
}

/// The idempotent consumer's SQL without Kafka: per transaction, the multi-row dedup
/// insert and one business insert per record; records/s.
async fn sql_only_rate(pool: &sqlx::PgPool, n: usize, batch: usize) -> (f64, Cpu) {
    let group = unique("sql");
    let ((), wall, cpu) = measured(async {
        let mut done = 0;
        while done < n {
            let ids: Vec<Uuid> = (0..batch).map(|_| Uuid::now_v7()).collect();
            let mut tx = pool.begin().await.unwrap();
            let new: Vec<Uuid> = sqlx::query_scalar(
                "INSERT INTO rk_processed_messages (consumer_group, message_id) SELECT $1, id FROM unnest($2::uuid[]) AS u(id) \
                 ON CONFLICT DO NOTHING RETURNING message_id",
            )
            .bind(&group)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
            let keys: Vec<String> = (0..new.len()).map(|i| format!("k{}", i % 1000)).collect();
            let ns: Vec<i32> = (0..new.len() as i32).collect();
            sqlx::query("INSERT INTO effects (message_id, key, n) SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[])")
                .bind(&new)
                .bind(&keys)
                .bind(&ns)
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
            done += batch;
        }
    })
    .await;
    (n as f64 / wall.as_secs_f64(), cpu)
}

/// Inserts `n` outbox rows for `topic`.
async fn fill_outbox(pool: &sqlx::PgPool, topic: &str, n: usize) {
    let outbox = Outbox::new();
    let mut tx = pool.begin().await.unwrap();
    for i in 0..n {
        let options = EnqueueOptions { topic: Some(topic.to_owned()), ..Default::default() };
        outbox.enqueue_with(&mut tx, &Work { key: format!("k{}", i % 1000), n: i as u32 }, options).await.unwrap();
    }
    tx.commit().await.unwrap();
}

/// Removes the dead rows an earlier run left in the outbox and its index, so that every
/// run starts from the same table.
async fn vacuum_outbox(pool: &sqlx::PgPool) {
    sqlx::query("VACUUM ANALYZE rk_outbox").execute(pool).await.unwrap();
}

/// The relay draining `n` rows; rows/s.
async fn relay_rate(
    pool: &sqlx::PgPool,
    kafka: &KafkaConfig,
    topic: &str,
    n: usize,
    (stubbed, sequenced): (bool, bool),
) -> (f64, Cpu) {
    vacuum_outbox(pool).await;
    fill_outbox(pool, topic, n).await;
    let relay = OutboxRelay::builder(kafka.clone(), pool.clone())
        .batch_size(1000)
        .retention(Duration::ZERO)
        .sequence_numbers(sequenced)
        .build()
        .unwrap();
    // `drain` runs the pipeline the running relay runs: the next batch is claimed while
    // one awaits its acknowledgements.
    let ((), wall, cpu) = measured(async {
        let mut left = n;
        while left > 0 {
            let b = if stubbed { reliable_kafka::testing::drain_stubbed(&relay).await } else { relay.drain().await }
                .unwrap();
            left -= b.published;
        }
    })
    .await;
    (n as f64 / wall.as_secs_f64(), cpu)
}

/// R4: the relay with the real producer ÷ the relay with the send stubbed.
async fn r4(
    pool: &sqlx::PgPool,
    cluster: &EmbeddedKafka,
    mock: &KafkaConfig,
    scale: usize,
) -> (String, serde_json::Value) {
    let cpu = |c: &Cpu| json!({ "client_s": c.client, "database_s": c.database, "broker_s": c.broker });
    let n4 = 50_000 / scale;
    let t4 = unique("r4");
    cluster.create_topics(&[(&t4, PARTITIONS)]).unwrap();
    let (real, real_cpu) = relay_rate(pool, mock, &t4, n4, (false, false)).await;
    let (stub, stub_cpu) = relay_rate(pool, mock, &t4, n4, (true, false)).await;
    // Not part of the ratio: the relay with sequence numbers (watermark deduplication),
    // which hands a batch to the producer only once the one before it is acknowledged.
    let (numbered, numbered_cpu) = relay_rate(pool, mock, &t4, n4, (false, true)).await;
    (
        format!("R4 relay/stubbed = {:.2} (relay {real:.0} rows/s, send stubbed {stub:.0} rows/s; batch 1000, pipelined, delete on delivery; with sequence numbers {numbered:.0} rows/s)", real / stub),
        json!({ "ratio": real / stub, "relay_rps": real, "stubbed_rps": stub, "sequenced_rps": numbered,
                "cpu_relay": cpu(&real_cpu), "cpu_stubbed": cpu(&stub_cpu), "cpu_sequenced": cpu(&numbered_cpu) }),
    )
}

/// Rows/s of `instances` relays (each its own producer and pool connections) sharing
/// the outbox by `shards` shards, draining `n` rows of a `partitions`-partition topic.
async fn relays_rate(
    pool: &sqlx::PgPool,
    kafka: &KafkaConfig,
    topic: &str,
    n: usize,
    instances: usize,
    shards: u32,
) -> f64 {
    vacuum_outbox(pool).await;
    fill_outbox(pool, topic, n).await;
    let start = Instant::now();
    let relays: Vec<_> = (0..instances)
        .map(|_| {
            OutboxRelay::builder(kafka.clone(), pool.clone())
                .shards(shards)
                .batch_size(1000)
                .retention(Duration::ZERO)
                .rebalance_interval(Duration::from_millis(200))
                .build()
                .unwrap()
                .spawn()
        })
        .collect();
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM rk_outbox").fetch_one(pool).await.unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    for r in relays {
        r.shutdown().await.unwrap();
    }
    rate
}

/// Sharded relays, 1, 2 and 4 instances, on the mock cluster and on the TCP broker.
async fn relay_scale(pool: &sqlx::PgPool, cluster: &EmbeddedKafka, mock: &KafkaConfig, scale: usize) -> String {
    let mut out = Vec::new();
    let tcp = reliable_kafka_tests::kafka();
    for (name, kafka, n) in [("mock", mock, 100_000 / scale), ("tcp", &tcp, 20_000 / scale)] {
        let mut line = format!("relay scale ({name}, {n} rows, 32 partitions, batch 1000):");
        for (instances, shards) in [(1, 1), (1, 32), (2, 32), (4, 32)] {
            let topic = unique("scale");
            if name == "mock" {
                cluster.create_topics(&[(&topic, PARTITIONS)]).unwrap();
            } else {
                kafka.ensure_topics(&[(&topic, PARTITIONS, 1)]).await.unwrap();
            }
            let rate = relays_rate(pool, kafka, &topic, n, instances, shards).await;
            line += &format!(" {instances}x{shards} shards {rate:.0} rows/s;");
        }
        out.push(line);
    }
    out.join("\n")
}

/// p50 and p99 (ms) of `samples`.
fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

/// Latency recorder: the handler notes when each message id arrived.
struct Receipt {
    topic: String,
    group: String,
    seen: Arc<Mutex<HashMap<Uuid, Instant>>>,
}

impl EventHandler for Receipt {
    type Event = Work;
    fn options(&self) -> HandlerOptions {
        HandlerOptions::new().topic(self.topic.clone()).group(self.group.clone())
    }
    fn handle<'a>(&'a self, _event: Work, ctx: &'a mut HandlerContext) -> BoxFuture<'a, Result<(), HandlerError>> {
        let now = Instant::now();
        self.seen.lock().unwrap().insert(ctx.message_id(), now);
        Box::pin(async { Ok(()) })
    }
}

/// R5: outbox commit → handler receipt, and raw produce → consume, on the TCP broker;
/// `n` messages 10 ms apart. Returns ((p50, p99) framework, (p50, p99) raw) in ms.
async fn latencies(pool: &sqlx::PgPool, kafka: &KafkaConfig, n: usize) -> ((f64, f64), (f64, f64)) {
    let topic = unique("latency");
    create_topics(kafka, &topic, 1).await;
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let relay = OutboxRelay::builder(kafka.clone(), pool.clone()).build().unwrap().spawn();
    let receipt = Receipt { topic: topic.clone(), group: unique("latency"), seen: seen.clone() };
    let c = ListenerContainer::builder(kafka.clone(), pool.clone()).handler(receipt).build().unwrap().spawn();
    // Warm up: the group join and the first fetch.
    fill_outbox(pool, &topic, 1).await;
    while c.stats().processed() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let outbox = Outbox::new();
    let mut committed = HashMap::new();
    for i in 0..n {
        let mut tx = pool.begin().await.unwrap();
        let options = EnqueueOptions { topic: Some(topic.clone()), ..Default::default() };
        let id = outbox.enqueue_with(&mut tx, &Work { key: "k".into(), n: i as u32 }, options).await.unwrap();
        tx.commit().await.unwrap();
        committed.insert(id, Instant::now());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while (c.stats().processed() as usize) < n + 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.shutdown().await.unwrap();
    relay.shutdown().await.expect("graceful shutdown");
    let framework: Vec<f64> = {
        let seen = seen.lock().unwrap();
        committed.iter().filter_map(|(id, t)| seen.get(id).map(|r| r.duration_since(*t).as_secs_f64() * 1e3)).collect()
    };

    // Raw: a producer and a consumer, the send time carried in the payload.
    let raw_topic = unique("latency-raw");
    create_topics(kafka, &raw_topic, 1).await;
    let brokers = kafka.brokers().to_owned();
    let raw = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", unique("raw-latency"))
            .set("auto.offset.reset", "latest")
            .set("fetch.wait.max.ms", "5")
            .create()
            .unwrap();
        consumer.subscribe(&[&raw_topic]).unwrap();
        let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
        // Until the consumer has its assignment, records would be skipped (offset latest).
        while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
            consumer.poll(Duration::from_millis(100));
        }
        let epoch = Instant::now();
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let sent_us = epoch.elapsed().as_micros().to_string();
            producer.send(BaseRecord::<str, str>::to(&raw_topic).key("k").payload(&sent_us)).unwrap();
            // Serve the delivery report without `flush`, whose poll loop sleeps 100 ms.
            while producer.in_flight_count() > 0 {
                producer.poll(Duration::from_millis(1));
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                    use rdkafka::Message;
                    let sent: u128 = std::str::from_utf8(m.payload().unwrap()).unwrap().parse().unwrap();
                    out.push((epoch.elapsed().as_micros() - sent) as f64 / 1e3);
                    break;
                }
            }
            let _ = i;
            std::thread::sleep(Duration::from_millis(10));
        }
        out
    })
    .await
    .unwrap();
    (percentiles(framework), percentiles(raw))
}

/// P1 and P2: the peer benchmark (`benches/peers`, a package of its own outside the
/// workspace so that RustStream and its sqlx 0.9 stay out of every other build), built
/// and run in this build directory: its `P1`/`P2` lines and their JSON.
fn peers(quick: bool) -> Vec<(String, String, serde_json::Value)> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/Cargo.toml");
    let target = default_json_path().parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["run", "--release", "--quiet", "--manifest-path", manifest, "--target-dir"]).arg(&target);
    if quick {
        cmd.args(["--", "--quick"]);
    }
    eprintln!("P1/P2: building and running the peer benchmark ({manifest})");
    let out = cmd.stderr(std::process::Stdio::inherit()).output();
    let stdout = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            let why = format!("not measured: the peer benchmark exited with {}", o.status);
            return not_measured(&why);
        }
        Err(e) => {
            return not_measured(&format!("not measured: cargo did not start ({e})"));
        }
    };
    // One `json {…}` line per broker, keyed `P1_mock`, `P2_tansu`, ….
    let mut values = serde_json::Map::new();
    for line in stdout.lines().filter_map(|l| l.strip_prefix("json ")) {
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(line) {
            values.extend(m);
        }
    }
    stdout
        .lines()
        .filter(|l| l.starts_with("P1 ") || l.starts_with("P2 "))
        .map(|l| {
            let broker = if l.contains("(mock broker") { "mock" } else { "tansu" };
            let name = format!("{}_{broker}", &l[..2]);
            let value = values.get(&name).cloned().unwrap_or_default();
            (name, l.to_owned(), value)
        })
        .collect()
}

/// P1 and P2 as lines saying why they were not measured.
fn not_measured(why: &str) -> Vec<(String, String, serde_json::Value)> {
    ["P1 relay/ruststream", "P2 consumer/ruststream"]
        .map(|n| (n[..2].to_owned(), format!("{n} = {why}"), json!({ "error": why })))
        .into()
}

/// `ratios.json` in the build directory this binary runs from (`<target>/<profile>/ratios`
/// → `<target>/ratios.json`), wherever `CARGO_TARGET_DIR` put it.
fn default_json_path() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("path of the running binary");
    let target = exe.parent().and_then(|profile| profile.parent()).map(std::path::Path::to_path_buf);
    target.unwrap_or_else(|| std::path::PathBuf::from(".")).join("ratios.json")
}

#[tokio::main]
async fn main() {
    let json_path = std::env::args()
        .skip_while(|a| a != "--json")
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(default_json_path);
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    let (pool, schema) = isolated_pool().await;
    sqlx::query("CREATE TABLE effects (id bigserial PRIMARY KEY, message_id uuid NOT NULL, key text NOT NULL, n integer NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let cluster = EmbeddedKafka::start(1).expect("mock cluster");
    let mock = cluster.config().set("fetch.wait.max.ms", "5");
    if std::env::args().any(|a| a == "--relay-scale") {
        println!("{}", relay_scale(&pool, &cluster, &mock, scale).await);
        return;
    }
    if std::env::args().any(|a| a == "--r4-only") {
        let (line, value) = r4(&pool, &cluster, &mock, scale).await;
        println!("{line}\n{value}");
        return;
    }
    if std::env::args().any(|a| a == "--peers-only") {
        for (_, line, value) in peers(quick) {
            println!("{line}\n{value}");
        }
        return;
    }
    if std::env::args().any(|a| a == "--r7-only") {
        println!("{}", r7(&cluster, &mock, &schema, 200_000 / scale).await.0);
        return;
    }
    if std::env::args().any(|a| a == "--r4-only") {
        println!("{}", r4(&pool, &cluster, &mock, scale).await.0);
        return;
    }
    let mut lines = Vec::new();
    let mut report = serde_json::Map::new();
    let mut record = |name: &str, line: String, value: serde_json::Value| {
        println!("{line}");
        lines.push(line);
        report.insert(name.to_owned(), value);
    };
    let cpu = |c: &Cpu| json!({ "client_s": c.client, "database_s": c.database, "broker_s": c.broker });

    // R1: container with a no-op handler ÷ raw BaseConsumer, same records.
    let n1 = 200_000 / scale;
    let t1 = unique("r1");
    cluster.create_topics(&[(&t1, PARTITIONS)]).unwrap();
    let brokers = cluster.bootstrap_servers().to_owned();
    let (b, t) = (brokers.clone(), t1.clone());
    tokio::task::spawn_blocking(move || produce(&b, &t, n1)).await.unwrap();
    let (b, t) = (brokers.clone(), t1.clone());
    let (raw_wall, _, raw_cpu) =
        measured(async { tokio::task::spawn_blocking(move || raw_drain(&b, &t, n1)).await.unwrap() }).await;
    let raw = (n1 - 1) as f64 / raw_wall.as_secs_f64();
    let (fw, fw_cpu) = container_rate(&pool, &mock, &t1, n1, Setup::new(500, false)).await;
    record(
        "R1",
        format!("R1 framework/raw = {:.2} (framework {fw:.0} rec/s, raw {raw:.0} rec/s; no-op handler, max_batch 500, dedup insert per record)", fw / raw),
        json!({ "ratio": fw / raw, "framework_rps": fw, "raw_rps": raw, "cpu_framework": cpu(&fw_cpu), "cpu_raw": cpu(&raw_cpu) }),
    );

    // R1w: the R1 container in watermark mode, on numbered records ÷ raw rdkafka
    // committing one PostgreSQL transaction per 500 records.
    let t1w = unique("r1w");
    cluster.create_topics(&[(&t1w, PARTITIONS)]).unwrap();
    let (b, t) = (brokers.clone(), t1w.clone());
    tokio::task::spawn_blocking(move || produce_with(&b, &t, n1, true)).await.unwrap();
    let (b, t, p, rt) = (brokers.clone(), t1w.clone(), pool.clone(), tokio::runtime::Handle::current());
    let (raw_tx_wall, _, raw_tx_cpu) =
        measured(async { tokio::task::spawn_blocking(move || raw_tx_drain(&b, &t, n1, 500, p, rt)).await.unwrap() })
            .await;
    let raw_tx = (n1 - 1) as f64 / raw_tx_wall.as_secs_f64();
    let (wm, wm_cpu) =
        container_rate(&pool, &mock, &t1w, n1, Setup { watermark: true, ..Setup::new(500, false) }).await;
    record(
        "R1w",
        format!("R1w watermark/raw-tx = {:.2} (framework in watermark mode {wm:.0} rec/s, raw rdkafka with one PostgreSQL transaction per 500 records {raw_tx:.0} rec/s; no-op handler, max_batch 500; dedup-row mode R1 above {fw:.0} rec/s)", wm / raw_tx),
        json!({ "ratio": wm / raw_tx, "framework_rps": wm, "raw_tx_rps": raw_tx, "row_mode_rps": fw, "cpu_framework": cpu(&wm_cpu), "cpu_raw_tx": cpu(&raw_tx_cpu) }),
    );
    if std::env::args().any(|a| a == "--r1-only") {
        return;
    }

    // R2: idempotent consumer (dedup + business insert, 100 records/tx) ÷ the same SQL from memory.
    let n2 = 50_000 / scale;
    let t2 = unique("r2");
    cluster.create_topics(&[(&t2, PARTITIONS)]).unwrap();
    let (b, t) = (brokers.clone(), t2.clone());
    tokio::task::spawn_blocking(move || produce(&b, &t, n2)).await.unwrap();
    let (fw, fw_cpu) = container_rate(&pool, &mock, &t2, n2, Setup::new(100, true)).await;
    let (sql, sql_cpu) = sql_only_rate(&pool, n2, 100).await;
    record(
        "R2",
        format!("R2 idempotent/sql-only = {:.2} (idempotent consumer {fw:.0} rec/s, same SQL without Kafka {sql:.0} rec/s; 100 records/tx, multi-row inserts)", fw / sql),
        json!({ "ratio": fw / sql, "framework_rps": fw, "sql_only_rps": sql, "cpu_framework": cpu(&fw_cpu), "cpu_sql_only": cpu(&sql_cpu) }),
    );
    let batched = fw;

    // R3: 100 records/tx ÷ 1 record/tx.
    let n3 = 10_000 / scale;
    let t3 = unique("r3");
    cluster.create_topics(&[(&t3, PARTITIONS)]).unwrap();
    let (b, t) = (brokers.clone(), t3.clone());
    tokio::task::spawn_blocking(move || produce(&b, &t, n3)).await.unwrap();
    let (single, single_cpu) = container_rate(&pool, &mock, &t3, n3, Setup::new(1, true)).await;
    let t3b = unique("r3b");
    cluster.create_topics(&[(&t3b, PARTITIONS)]).unwrap();
    let (b, t) = (brokers.clone(), t3b.clone());
    tokio::task::spawn_blocking(move || produce(&b, &t, n2)).await.unwrap();
    let (per_record, _) =
        container_rate(&pool, &mock, &t3b, n2, Setup { per_record: true, ..Setup::new(100, true) }).await;
    record(
        "R3",
        format!(
            "R3 batch100/batch1 = {:.1} (100 records/tx {batched:.0} rec/s, 1 record/tx {single:.0} rec/s; \
             a handler inserting row by row within its batches: {per_record:.0} rec/s = {:.1}x)",
            batched / single,
            per_record / single
        ),
        json!({ "ratio": batched / single, "batch100_rps": batched, "batch1_rps": single,
                "batch100_per_record_rps": per_record, "cpu_batch1": cpu(&single_cpu) }),
    );

    let (line, value) = r4(&pool, &cluster, &mock, scale).await;
    record("R4", line, value);

    // R5: outbox commit → consumer receipt ÷ raw produce → consume, on the TCP broker.
    // Both consumers ask the broker to answer a fetch within 10 ms (tansu 0.6.0 holds a
    // fetch for the full fetch.wait.max.ms, 500 ms by default, even when records arrive).
    let tcp = reliable_kafka_tests::kafka().set("fetch.wait.max.ms", "5");
    let n5 = 500 / scale.min(5);
    let ((fp50, fp99), (rp50, rp99)) = latencies(&pool, &tcp, n5).await;
    record(
        "R5",
        format!(
            "R5 p99 framework/raw = {:.2} (outbox commit→receipt p50 {fp50:.1} ms p99 {fp99:.1} ms; raw produce→consume p50 {rp50:.1} ms p99 {rp99:.1} ms; {n5} messages, broker {})",
            fp99 / rp99,
            tcp.brokers()
        ),
        json!({ "ratio": fp99 / rp99, "framework_p50_ms": fp50, "framework_p99_ms": fp99, "raw_p50_ms": rp50, "raw_p99_ms": rp99 }),
    );

    // R6: batched idempotent consumer with synchronous_commit on ÷ off.
    let off = {
        let base: sqlx::postgres::PgConnectOptions = reliable_kafka_tests::database_url().parse().unwrap();
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect_with(base.options([("search_path", schema.as_str()), ("synchronous_commit", "off")]))
            .await
            .unwrap()
    };
    let t6 = unique("r6");
    cluster.create_topics(&[(&t6, PARTITIONS)]).unwrap();
    let (b, t) = (brokers.clone(), t6.clone());
    tokio::task::spawn_blocking(move || produce(&b, &t, n2)).await.unwrap();
    let (async_rate, _) = container_rate(&off, &mock, &t6, n2, Setup::new(100, true)).await;
    record(
        "R6",
        format!("R6 sync/async commit = {:.2} (synchronous_commit=on {batched:.0} rec/s, off {async_rate:.0} rec/s; 100 records/tx)", batched / async_rate),
        json!({ "ratio": batched / async_rate, "sync_rps": batched, "async_rps": async_rate }),
    );

    // Not a ratio of DESIGN.md: the R1 and R2 consumers with 4 partitions in parallel.
    let tp = unique("parallel");
    cluster.create_topics(&[(&tp, PARTITIONS)]).unwrap();
    let (b, t) = (brokers.clone(), tp.clone());
    tokio::task::spawn_blocking(move || produce(&b, &t, n1)).await.unwrap();
    let (p1, p1_cpu) = container_rate(&pool, &mock, &tp, n1, Setup { partitions: 4, ..Setup::new(500, false) }).await;
    let tp2 = unique("parallel2");
    cluster.create_topics(&[(&tp2, PARTITIONS)]).unwrap();
    let (b, t) = (brokers.clone(), tp2.clone());
    tokio::task::spawn_blocking(move || produce(&b, &t, n2)).await.unwrap();
    let (p2, p2_cpu) = container_rate(&pool, &mock, &tp2, n2, Setup { partitions: 4, ..Setup::new(100, true) }).await;
    record(
        "parallel",
        format!(
            "partition_concurrency 4: no-op {p1:.0} rec/s (R1 {:.2}), idempotent with business insert {p2:.0} rec/s (R2 {:.2})",
            p1 / raw,
            p2 / sql
        ),
        json!({ "noop_rps": p1, "idempotent_rps": p2, "cpu_noop": cpu(&p1_cpu), "cpu_idempotent": cpu(&p2_cpu) }),
    );

    let (line, value) = r7(&cluster, &mock, &schema, 4 * n2).await;
    record("R7", line, value);

    if !std::env::args().any(|a| a == "--no-peers") {
        for (name, line, value) in peers(quick) {
            record(&name, line, value);
        }
    }

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    report.insert("machine".into(), json!({ "cores": cores, "quick": quick }));
    if let Some(dir) = json_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&serde_json::Value::Object(report)).unwrap())
        .unwrap_or_else(|e| panic!("write {}: {e}", json_path.display()));
    eprintln!("wrote {}", json_path.display());
    drop(lines);
}

/// R7's rounds (each one plain and one instrumented run).
const ROUNDS: usize = 8;

/// R7: the R2 consumer with the library's metrics and spans recorded in memory ÷ the
/// same without; each in a fresh two-worker runtime and pool, on emptied tables after a
/// checkpoint, alternating in ABBA order for `ROUNDS` rounds; the ratio of the two
/// arms' throughputs over all their runs.
async fn r7(cluster: &EmbeddedKafka, mock: &KafkaConfig, schema: &str, n: usize) -> (String, serde_json::Value) {
    let instrumentation = Arc::new(reliable_kafka_benches::instrumented::Instrumentation::new());
    // Per arm: (records/s, client CPU s) of each run.
    let mut plain: Vec<(f64, f64)> = Vec::new();
    let mut instrumented: Vec<(f64, f64)> = Vec::new();
    for round in 0..ROUNDS {
        // ABBA: which goes first alternates, so a drift within a round cancels out.
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for on in order {
            let topic = unique("r7");
            cluster.create_topics(&[(&topic, PARTITIONS)]).unwrap();
            let (b, t) = (cluster.bootstrap_servers().to_owned(), topic.clone());
            tokio::task::spawn_blocking(move || produce(&b, &t, n)).await.unwrap();
            let (inst, kafka, schema) = (instrumentation.clone(), mock.clone(), schema.to_owned());
            let run = std::thread::spawn(move || {
                inst.runtime(on).block_on(async {
                    let base: sqlx::postgres::PgConnectOptions = reliable_kafka_tests::database_url().parse().unwrap();
                    let pool = sqlx::postgres::PgPoolOptions::new()
                        .max_connections(10)
                        .connect_with(base.options([("search_path", schema.as_str())]))
                        .await
                        .unwrap();
                    // Every run starts from the same tables and a clean checkpoint (the
                    // dedup index grows by n rows a run otherwise).
                    for stmt in ["TRUNCATE rk_processed_messages, effects", "CHECKPOINT"] {
                        sqlx::query(stmt).execute(&pool).await.unwrap();
                    }
                    let (rate, cpu) = container_rate(&pool, &kafka, &topic, n, Setup::new(100, true)).await;
                    (rate, cpu.client)
                })
            })
            .join()
            .unwrap();
            if on {
                instrumented.push(run)
            } else {
                plain.push(run)
            }
        }
    }
    // Throughput over all runs of an arm (records over time: each run has n records),
    // and client CPU per record (µs), which the machine's noise moves less.
    let rate = |runs: &[(f64, f64)]| runs.len() as f64 / runs.iter().map(|(r, _)| 1.0 / r).sum::<f64>();
    let cpu_us = |runs: &[(f64, f64)]| runs.iter().map(|(_, c)| c).sum::<f64>() / (runs.len() * n) as f64 * 1e6;
    let (p, i) = (rate(&plain), rate(&instrumented));
    let (pc, ic) = (cpu_us(&plain), cpu_us(&instrumented));
    let ratios: Vec<String> = plain.iter().zip(&instrumented).map(|(p, i)| format!("{:.2}", i.0 / p.0)).collect();
    let (spans, exposition) = instrumentation.recorded();
    (
        format!(
            "R7 instrumented/plain = {:.2} (R2 consumer with metrics and spans recorded in memory {i:.0} rec/s, without {p:.0} rec/s, \
             over {ROUNDS} ABBA rounds of {n} records (the rounds' ratios {}); client CPU {ic:.1} vs {pc:.1} µs/record; \
             {spans} spans exported, exposition {exposition} bytes)",
            i / p,
            ratios.join(" ")
        ),
        json!({ "ratio": i / p, "instrumented_rps": i, "plain_rps": p, "client_cpu_us_per_record_instrumented": ic,
                "client_cpu_us_per_record_plain": pc, "runs_plain": plain, "runs_instrumented": instrumented,
                "spans": spans, "exposition_bytes": exposition }),
    )
}
