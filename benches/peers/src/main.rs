//! P1 and P2 of `BENCHMARKS.md`: reliable-kafka against RustStream, in one process, on
//! the same PostgreSQL, the same broker and the same records.
//!
//! - **P1 relay/ruststream**: rows/s of the outbox relay draining N committed outbox rows
//!   to a 32-partition topic, ÷ RustStream's transactional outbox doing the same: its
//!   "relay" pattern (`ruststream-sqlx`'s guide): an `InboxQueue` subscription on the
//!   events table that publishes each claimed batch to Kafka (`ruststream-rdkafka`), the
//!   sends of a batch in flight together, the acknowledgement deleting the rows. Its
//!   batch size and worker count are swept and the best is used.
//! - **P2 consumer/ruststream**: records/s of the idempotent consumer (a business row per
//!   record, the deduplication row in the same transaction, batches of 500) ÷ a RustStream
//!   Kafka batch subscriber doing the same in one PostgreSQL transaction per batch
//!   (RustStream has no Kafka deduplication of its own, so the inbox table is written the
//!   way its guide writes one: `INSERT … ON CONFLICT DO NOTHING`). Both read the same
//!   pre-produced records from the beginning, with tracked offset commits.
//!
//! Both run on librdkafka's mock cluster (in-process, so the broker costs both sides the
//! same) and on the TCP broker of `KAFKA_BROKERS` (tansu in CI), both consumers with
//! `fetch.wait.max.ms=5`. For each broker, as soon as it is measured, prints a `P1 …` and
//! a `P2 …` line, then a `json {…}` line the ratios command keeps. A consumer run that
//! has not finished within [`DEADLINE`] is reported stalled (`NaN`), not waited for.
//! A measurement, never a test.
//!
//! `cargo run --release --manifest-path benches/peers/Cargo.toml [-- --quick]`

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, join_all};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use reliable_kafka::{
    EmbeddedKafka, EnqueueOptions, EventHandler, HandlerContext, HandlerError, HandlerOptions, KafkaConfig,
    ListenerContainer, Outbox, OutboxRelay, RecordInfo, headers,
};
use ruststream::Broker as _;
use ruststream_rdkafka::KafkaPublish;
use ruststream_rdkafka::prelude::*;
use ruststream_sqlx::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

const PARTITIONS: i32 = 32;

/// A consumer run that has not consumed every record by then is reported as stalled
/// (`NaN` in the JSON), not waited for.
const DEADLINE: Duration = Duration::from_secs(90);

/// The record both sides publish and consume.
#[derive(Debug, Clone, Serialize, Deserialize, reliable_kafka::Event, Outgoing)]
#[event(topic = "set.per.enqueue", key = key)]
#[outgoing(headers = KeyHeader)]
struct Work {
    key: String,
    n: u32,
    /// The message id, in the payload for RustStream's batch subscriber (its batches
    /// carry no per-record headers).
    id: Uuid,
}

// ---------------------------------------------------------------- RustStream's side

/// The events table of RustStream's relay pattern (row-lock form: `FOR UPDATE SKIP LOCKED`).
#[derive(Inbox, sqlx::FromRow)]
#[inbox(table = "peer_outbox")]
struct PeerOutboxRow {
    #[field(id, generated)]
    id: i64,
    #[field(payload)]
    payload: Vec<u8>,
}

/// The Kafka record key: RustStream turns this header into the record key.
#[derive(Serialize, Deserialize)]
struct KeyHeader {
    #[serde(rename = "kafka-partition-key")]
    key: String,
}

#[derive(OutSlot)]
#[publishes(Work)]
struct ToKafka;

/// Names set once per run, read by the subscriptions RustStream builds.
static RELAY_TOPIC: Mutex<String> = Mutex::new(String::new());
static CONSUME_TOPIC: Mutex<String> = Mutex::new(String::new());
static CONSUME_GROUP: Mutex<String> = Mutex::new(String::new());
/// Transactions of the last consumer run of each side.
static PEER_TRANSACTIONS: AtomicU64 = AtomicU64::new(0);
static OUR_TRANSACTIONS: AtomicU64 = AtomicU64::new(0);

fn get(name: &Mutex<String>) -> String {
    name.lock().unwrap().clone()
}

fn set(name: &Mutex<String>, value: String) {
    *name.lock().unwrap() = value;
}

fn relay_topic() -> String {
    get(&RELAY_TOPIC)
}

/// A claimed batch of outbox rows, sent with their keys, all in flight together; the
/// acknowledgement deletes the rows.
#[subscriber(InboxQueue::<PeerOutboxRow>::new("peer-outbox"))]
async fn relay(events: &[Work], Out(kafka): Out<impl Publisher, ToKafka>) -> HandlerOutcome {
    let topic = relay_topic();
    let keys: Vec<KeyHeader> = events.iter().map(|e| KeyHeader { key: e.key.clone() }).collect();
    let sends = events.iter().zip(&keys).map(|(e, k)| kafka.message(e).with_headers(k).to(topic.as_str()).publish());
    if join_all(sends).await.iter().all(Result::is_ok) { HandlerOutcome::ack() } else { HandlerOutcome::retry() }
}

#[derive(Clone, FromRef)]
struct PeerState {
    pool: sqlx::PgPool,
}

/// A batch of records: the inbox rows of the new ones and their business rows, in one
/// transaction.
#[subscriber(
    KafkaTopic::new(get(&CONSUME_TOPIC))
        .group(get(&CONSUME_GROUP))
        .start(StartOffset::Earliest)
        .commit(Commit::Tracked)
        .config("fetch.wait.max.ms", "5")
)]
async fn consume(events: &[Work], State(pool): State<sqlx::PgPool>) -> HandlerOutcome {
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let run = async {
        let mut tx = pool.begin().await?;
        let new: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO peer_inbox (message_id) SELECT * FROM unnest($1::uuid[]) ON CONFLICT DO NOTHING RETURNING message_id",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let new: std::collections::HashSet<Uuid> = new.into_iter().collect();
        let fresh: Vec<&Work> = events.iter().filter(|e| new.contains(&e.id)).collect();
        let (ids, keys, ns): (Vec<Uuid>, Vec<&str>, Vec<i32>) =
            fresh.iter().map(|e| (e.id, e.key.as_str(), e.n as i32)).fold(Default::default(), |mut acc, (i, k, n)| {
                acc.0.push(i);
                acc.1.push(k);
                acc.2.push(n);
                acc
            });
        sqlx::query(
            "INSERT INTO peer_effects (message_id, key, n) SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[])",
        )
        .bind(&ids)
        .bind(&keys)
        .bind(&ns)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        PEER_TRANSACTIONS.fetch_add(1, Ordering::Relaxed);
        Ok::<(), sqlx::Error>(())
    };
    match run.await {
        Ok(()) => HandlerOutcome::ack(),
        Err(_) => HandlerOutcome::retry(),
    }
}

/// RustStream's relay draining `n` rows committed in one transaction after it started;
/// rows/s from the commit to the empty table.
async fn ruststream_relay(url: &str, schema: &str, brokers: &str, n: usize, batch: usize, workers: usize) -> f64 {
    let pool = peer_pool(url, schema, workers as u32 + 2).await;
    let kafka = KafkaBroker::new([brokers.to_owned()]).producer_config("linger.ms", "5").bindable();
    let to_kafka = kafka.bind(KafkaPublish::default());
    let broker = SqlxBroker::new(pool.clone()).poll_interval(Duration::from_millis(10));
    let app = RustStream::new(AppInfo::new("peer-relay", "0.1.0"))
        .with_broker(broker, |b| {
            b.include(relay.batch(NonZeroUsize::new(batch).unwrap()).workers(NonZeroUsize::new(workers).unwrap()))
                .out(ToKafka, to_kafka)
                .build();
        })
        .with_broker(kafka, |_b| {});
    let running = app.start().await.expect("RustStream relay starts");
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query(
        "INSERT INTO peer_outbox (payload) SELECT convert_to(json_build_object('key', 'k' || (i % 1000), 'n', i, 'id', gen_random_uuid())::text, 'UTF8') \
         FROM generate_series(1, $1) i",
    )
    .bind(n as i64)
    .execute(&pool)
    .await
    .unwrap();
    let start = Instant::now();
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM peer_outbox").fetch_one(&pool).await.unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    running.shutdown().await.expect("RustStream relay stops");
    sqlx::query("VACUUM ANALYZE peer_outbox").execute(&pool).await.unwrap();
    rate
}

/// RustStream's batch subscriber consuming `n` records; records/s from the first
/// business row to the last.
async fn ruststream_consumer(url: &str, schema: &str, brokers: &str, n: usize, workers: usize) -> f64 {
    let pool = peer_pool(url, schema, workers as u32 + 4).await;
    let state_pool = pool.clone();
    let app = RustStream::new(AppInfo::new("peer-consumer", "0.1.0"))
        .on_startup(async move |()| Ok::<_, std::convert::Infallible>(PeerState { pool: state_pool }))
        .with_broker(KafkaBroker::new([brokers.to_owned()]), |b| {
            b.include(consume.batch(NonZeroUsize::new(500).unwrap()).workers(NonZeroUsize::new(workers).unwrap()));
        });
    let running = match app.start().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("RustStream's consumer did not start: {e}");
            return f64::NAN;
        }
    };
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM peer_effects").fetch_one(&pool).await.unwrap() as usize
    };
    let (rate, done) = consumed(n, count).await;
    running.shutdown().await.expect("RustStream consumer stops");
    if done < n {
        eprintln!("RustStream's consumer stalled: {done} of {n} records in {DEADLINE:?}");
        return f64::NAN;
    }
    rate
}

/// Waits for the first business row (the group join is not timed), then for `n`:
/// records/s from the first row to the last, and how many rows there were when it
/// stopped (fewer than `n` past [`DEADLINE`]).
async fn consumed<F, Fut>(n: usize, count: F) -> (f64, usize)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let joined = Instant::now();
    while count().await == 0 && joined.elapsed() < DEADLINE {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (start, first) = (Instant::now(), count().await);
    let mut done = first;
    while done < n && start.elapsed() < DEADLINE {
        tokio::time::sleep(Duration::from_millis(2)).await;
        done = count().await;
    }
    ((done - first) as f64 / start.elapsed().as_secs_f64(), done)
}

async fn peer_pool(url: &str, schema: &str, max: u32) -> sqlx::PgPool {
    let base: sqlx::postgres::PgConnectOptions = url.parse().expect("DATABASE_URL");
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .connect_with(base.options([("search_path", schema)]))
        .await
        .expect("pool")
}

// ------------------------------------------------------------ reliable-kafka's side

/// The idempotent consumer's handler: one multi-row business insert per batch.
struct Effects {
    topic: String,
    group: String,
}

impl EventHandler for Effects {
    type Event = Work;
    fn options(&self) -> HandlerOptions {
        HandlerOptions::new().topic(self.topic.clone()).group(self.group.clone())
    }
    fn handle<'a>(&'a self, event: Work, ctx: &'a mut HandlerContext) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            sqlx08::query("INSERT INTO effects (message_id, key, n) VALUES ($1, $2, $3)")
                .bind(ctx.message_id())
                .bind(&event.key)
                .bind(event.n as i32)
                .execute(ctx.tx())
                .await?;
            Ok(())
        })
    }
    fn handle_batch<'a>(
        &'a self,
        events: Vec<(Work, RecordInfo)>,
        ctx: &'a mut HandlerContext,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let ids: Vec<Uuid> = events.iter().map(|(_, r)| r.message_id).collect();
            let keys: Vec<&str> = events.iter().map(|(e, _)| e.key.as_str()).collect();
            let ns: Vec<i32> = events.iter().map(|(e, _)| e.n as i32).collect();
            sqlx08::query(
                "INSERT INTO effects (message_id, key, n) SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[])",
            )
            .bind(&ids)
            .bind(&keys)
            .bind(&ns)
            .execute(ctx.tx())
            .await?;
            Ok(())
        })
    }
}

/// The relay draining `n` rows committed before it starts; rows/s.
async fn our_relay(pool: &sqlx08::PgPool, kafka: &KafkaConfig, topic: &str, n: usize) -> f64 {
    let outbox = Outbox::new();
    let outbox_relay =
        OutboxRelay::builder(kafka.clone(), pool.clone()).batch_size(1000).retention(Duration::ZERO).build().unwrap();
    // Warm up as RustStream's side is (its app runs before the rows commit): one row
    // through, so the producer has its connections and the topic's metadata.
    let warm = Work { key: "warm".to_owned(), n: 0, id: Uuid::now_v7() };
    let options = EnqueueOptions { topic: Some(topic.to_owned()), ..Default::default() };
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_with(&mut tx, &warm, options).await.unwrap();
    tx.commit().await.unwrap();
    while outbox_relay.drain().await.unwrap().published == 0 {}
    let mut tx = pool.begin().await.unwrap();
    for i in 0..n {
        let options = EnqueueOptions { topic: Some(topic.to_owned()), ..Default::default() };
        let work = Work { key: format!("k{}", i % 1000), n: i as u32, id: Uuid::now_v7() };
        outbox.enqueue_with(&mut tx, &work, options).await.unwrap();
    }
    tx.commit().await.unwrap();
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        left -= outbox_relay.drain().await.unwrap().published;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    sqlx08::query("VACUUM ANALYZE rk_outbox").execute(pool).await.unwrap();
    rate
}

/// The idempotent consumer consuming `n` records; records/s from the first business row
/// to the last.
async fn our_consumer(pool: &sqlx08::PgPool, kafka: &KafkaConfig, topic: &str, n: usize, partitions: usize) -> f64 {
    let handler = Effects { topic: topic.to_owned(), group: format!("ours-{}", Uuid::new_v4().simple()) };
    let c = ListenerContainer::builder(kafka.clone(), pool.clone())
        .max_batch(500)
        .partition_concurrency(partitions)
        .handler(handler)
        .build()
        .unwrap()
        .spawn();
    let count = || async {
        sqlx08::query_scalar::<_, i64>("SELECT count(*) FROM effects").fetch_one(pool).await.unwrap() as usize
    };
    let (rate, done) = consumed(n, count).await;
    let stats = format!("{:?}", c.stats());
    OUR_TRANSACTIONS.store(c.stats().batches(), Ordering::Relaxed);
    c.shutdown().await.unwrap();
    if done < n {
        eprintln!("reliable-kafka's consumer stalled: {done} of {n} records in {DEADLINE:?}; {stats}");
        return f64::NAN;
    }
    rate
}

/// Produces `n` records with reliable-kafka's envelope headers (message id, event type)
/// and the message id in the payload too; one producer, as an upstream service would.
fn produce(brokers: &str, topic: &str, n: usize) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    for i in 0..n {
        let id = Uuid::now_v7();
        let key = format!("k{}", i % 1000);
        let payload = serde_json::to_vec(&Work { key: key.clone(), n: i as u32, id }).unwrap();
        let id = id.to_string();
        let h = OwnedHeaders::new()
            .insert(Header { key: headers::MESSAGE_ID, value: Some(&id) })
            .insert(Header { key: headers::EVENT_TYPE, value: Some("Work") });
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
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

// --------------------------------------------------------------------------- run

/// CPU seconds (user + system) of a process, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    Some((fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / 100.0)
}

/// CPU seconds so far of this process and of PostgreSQL's processes.
fn cpu_now() -> (f64, f64) {
    let mut database = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("postgres"))
        {
            database += cpu_seconds(pid).unwrap_or(0.0);
        }
    }
    (cpu_seconds(std::process::id()).unwrap_or(0.0), database)
}

/// `f`'s result and the CPU µs per record (client, PostgreSQL) it took for `n` records.
async fn per_record<T>(n: usize, f: impl std::future::Future<Output = T>) -> (T, (f64, f64)) {
    let before = cpu_now();
    let out = f.await;
    let after = cpu_now();
    let us = |a: f64, b: f64| (a - b) * 1e6 / n as f64;
    (out, (us(after.0, before.0), us(after.1, before.1)))
}

struct Broker {
    name: &'static str,
    brokers: String,
    ours: KafkaConfig,
}

impl Broker {
    async fn create(&self, cluster: Option<&EmbeddedKafka>, topic: &str) {
        match cluster {
            Some(c) => c.create_topics(&[(topic, PARTITIONS)]).unwrap(),
            None => self.ours.ensure_topics(&[(topic, PARTITIONS)]).await.unwrap(),
        }
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let quick = std::env::args().any(|a| a == "--quick");
    // `--only mock` or `--only tansu`: one broker.
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    let scale = if quick { 10 } else { 1 };
    let url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let schema = format!("rkp_{}", Uuid::new_v4().simple());
    let admin = sqlx08::PgPool::connect(&url).await.expect("connect to PostgreSQL (DATABASE_URL)");
    sqlx08::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
    let base: sqlx08::postgres::PgConnectOptions = url.parse().unwrap();
    let pool = sqlx08::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect_with(base.options([("search_path", schema.as_str())]))
        .await
        .unwrap();
    reliable_kafka::migrate(&pool).await.expect("migrate");
    for ddl in [
        "CREATE TABLE effects (id bigserial PRIMARY KEY, message_id uuid NOT NULL, key text NOT NULL, n integer NOT NULL)",
        "CREATE TABLE peer_effects (id bigserial PRIMARY KEY, message_id uuid NOT NULL, key text NOT NULL, n integer NOT NULL)",
        "CREATE TABLE peer_inbox (message_id uuid PRIMARY KEY, processed_at timestamptz NOT NULL DEFAULT now())",
        "CREATE TABLE peer_outbox (id bigserial PRIMARY KEY, payload bytea NOT NULL)",
    ] {
        sqlx08::query(ddl).execute(&pool).await.unwrap();
    }

    let cluster = EmbeddedKafka::start(1).expect("mock cluster");
    let tcp_brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let brokers = [
        Broker {
            name: "mock",
            brokers: cluster.bootstrap_servers().to_owned(),
            ours: cluster.config().set("fetch.wait.max.ms", "5"),
        },
        Broker {
            name: "tansu",
            brokers: tcp_brokers.clone(),
            ours: KafkaConfig::new(&tcp_brokers).set("fetch.wait.max.ms", "5"),
        },
    ];
    let mut report = serde_json::Map::new();
    let mut p1 = Vec::new();
    let mut p2 = Vec::new();
    for (i, broker) in brokers.iter().enumerate() {
        if only.as_ref().is_some_and(|o| o != broker.name) {
            continue;
        }
        let mock = (i == 0).then_some(&cluster);
        let n1 = if i == 0 { 50_000 } else { 20_000 } / scale;
        if std::env::args().any(|a| a == "--p2-only") {
            p1.push(format!("not measured ({} broker, --p2-only)", broker.name));
        } else {
            // P1: ours, then RustStream's at each batch size and worker count.
            let ours_topic = format!("p1-ours-{}", Uuid::new_v4().simple());
            broker.create(mock, &ours_topic).await;
            let ours = our_relay(&pool, &broker.ours, &ours_topic, n1).await;
            let peer_topic = format!("p1-peer-{}", Uuid::new_v4().simple());
            broker.create(mock, &peer_topic).await;
            set(&RELAY_TOPIC, peer_topic);
            let mut sweep = Vec::new();
            for (batch, workers) in [(100, 1), (500, 1), (1000, 1), (500, 4), (1000, 4), (500, 8)] {
                let rate = ruststream_relay(&url, &schema, &broker.brokers, n1, batch, workers).await;
                sweep.push((batch, workers, rate));
            }
            let best = sweep.iter().copied().max_by(|a, b| a.2.total_cmp(&b.2)).unwrap();
            let swept: Vec<String> = sweep.iter().map(|(b, w, r)| format!("{b}x{w} {r:.0}")).collect();
            p1.push(format!(
            "{:.2} ({} broker, {n1} rows of 32 partitions: reliable-kafka {ours:.0} rows/s, 6 headers, batch 1000; RustStream {:.0} rows/s at batch {} x {} workers, 1 header; RustStream by batch x workers: {})",
            ours / best.2,
            broker.name,
            best.2,
            best.0,
            best.1,
            swept.join(", ")
        ));
            report.insert(
            format!("P1_{}", broker.name),
            json!({ "ratio": ours / best.2, "ours_rps": ours, "ruststream_rps": best.2, "rows": n1,
                    "sweep": sweep.iter().map(|(b, w, r)| json!({"batch": b, "workers": w, "rps": r})).collect::<Vec<_>>() }),
        );
        }

        // P2: the same records for every consumer run, each run a group of its own.
        let n2 = if i == 0 { 50_000 } else { 20_000 } / scale;
        let topic = format!("p2-{}", Uuid::new_v4().simple());
        broker.create(mock, &topic).await;
        let (b, t) = (broker.brokers.clone(), topic.clone());
        tokio::task::spawn_blocking(move || produce(&b, &t, n2)).await.unwrap();
        let truncate = || sqlx08::query("TRUNCATE effects, peer_effects, peer_inbox").execute(&pool);
        let (mut ours, mut peer) = (Vec::new(), Vec::new());
        let (mut ours_cpu, mut peer_cpu) = (Vec::new(), Vec::new());
        let (mut ours_tx, mut peer_tx) = (Vec::new(), Vec::new());
        for parallel in [1, 4] {
            truncate().await.unwrap();
            let (rate, cpu) = per_record(n2, our_consumer(&pool, &broker.ours, &topic, n2, parallel)).await;
            ours.push((parallel, rate));
            ours_cpu.push(cpu);
            ours_tx.push(OUR_TRANSACTIONS.load(Ordering::Relaxed));
            truncate().await.unwrap();
            set(&CONSUME_TOPIC, topic.clone());
            set(&CONSUME_GROUP, format!("peer-{}", Uuid::new_v4().simple()));
            PEER_TRANSACTIONS.store(0, Ordering::Relaxed);
            let (rate, cpu) = per_record(n2, ruststream_consumer(&url, &schema, &broker.brokers, n2, parallel)).await;
            peer.push((parallel, rate));
            peer_cpu.push(cpu);
            peer_tx.push(PEER_TRANSACTIONS.load(Ordering::Relaxed));
        }
        let cpu = |v: &[(f64, f64)]| v.iter().map(|(c, d)| format!("{c:.1}+{d:.1}")).collect::<Vec<_>>().join(", ");
        let best = |v: &[(usize, f64)]| {
            v.iter().copied().filter(|r| r.1.is_finite()).max_by(|a, b| a.1.total_cmp(&b.1)).unwrap_or((0, f64::NAN))
        };
        let (o, p) = (best(&ours), best(&peer));
        let runs = |v: &[(usize, f64)]| v.iter().map(|(k, r)| format!("{k}: {r:.0}")).collect::<Vec<_>>().join(", ");
        p2.push(format!(
            "{:.2} ({} broker, {n2} records of 32 partitions: reliable-kafka {:.0} rec/s at partition_concurrency {}, RustStream {:.0} rec/s at {} workers; batches of 500, a deduplication row and a business row per record, one transaction per batch; \
             reliable-kafka by partition_concurrency {}; RustStream by workers {}; \
             CPU µs per record, client+PostgreSQL, whole run with group join: reliable-kafka {}; RustStream {}; \
             transactions: reliable-kafka {:?}; RustStream {:?})",
            o.1 / p.1,
            broker.name,
            o.1,
            o.0,
            p.1,
            p.0,
            runs(&ours),
            runs(&peer),
            cpu(&ours_cpu),
            cpu(&peer_cpu),
            ours_tx,
            peer_tx
        ));
        report.insert(
            format!("P2_{}", broker.name),
            json!({ "ratio": o.1 / p.1, "ours_rps": o.1, "ours_partition_concurrency": o.0, "ruststream_rps": p.1,
                    "ruststream_workers": p.0, "records": n2, "ours": ours, "ruststream": peer,
                    "cpu_us_per_record_ours": ours_cpu, "cpu_us_per_record_ruststream": peer_cpu,
                    "transactions_ours": ours_tx, "transactions_ruststream": peer_tx }),
        );
        // Each broker's lines as soon as they are measured.
        for line in p1.drain(..) {
            println!("P1 relay/ruststream = {line}");
        }
        for line in p2.drain(..) {
            println!("P2 consumer/ruststream = {line}");
        }
        println!("json {}", serde_json::Value::Object(std::mem::take(&mut report)));
    }

    sqlx08::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await.unwrap();
}
