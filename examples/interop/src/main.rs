//! Records that no code of reliable-kafka produced, consumed exactly once:
//!
//! - `outbox.event.order`: shaped as Debezium's outbox event router writes them (event
//!   id in header `id`, key = `aggregateid`, type in header `eventType`);
//! - `billing.events`: CloudEvents 1.0, Kafka binding, binary content mode, with text
//!   ids (`ce_id` = `inv-17` within `ce_source` = `/billing`);
//! - `shipment.events`: three event types on one topic, typed as Spring's
//!   `JsonSerializer` types them (`__TypeId__`), ids in an `event-id` header, read by a
//!   custom identity function; each type has its own `#[event_handler]`.
//!
//! A plain rdkafka producer writes them, a tenth of them twice (as a producer retry
//! would). A first consumer is killed half-way (its future dropped: no offset commit,
//! like a crash), a second one takes over and gets the first one's records again.
//! Each handler writes one effect row in its transaction; the last line is
//! `interop: ok debezium=<n> cloudevents=<n> multi_type=<n> lost=0 duplicated=0`.
//!
//! `cargo run -p interop --release`: SQLite in memory and librdkafka's mock cluster;
//! with `DATABASE_URL` and `KAFKA_BROKERS` set, PostgreSQL and that broker.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::future::BoxFuture;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reliable_kafka::{
    event_handler, AnyPool, Backend, EmbeddedKafka, Event, HandlerContext, HandlerError, Identity, IdentityError,
    IdentitySource, KafkaConfig, ListenerContainer,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Records per source; `MULTI` is split over the three shipment types.
const DEBEZIUM: usize = 60;
const CLOUD_EVENTS: usize = 60;
const MULTI: usize = 90;

/// A suffix that keeps reruns on a shared broker and database apart.
static RUN: OnceLock<String> = OnceLock::new();

fn run_id() -> &'static str {
    RUN.get().expect("set in main")
}
fn topic(base: &str) -> String {
    format!("{base}.{}", run_id())
}
/// The consumer group of a run: the CloudEvents' ids are the same in every run (text
/// ids within one `ce_source`), so a group of an earlier run would take them for
/// duplicates.
fn group() -> String {
    format!("interop-group.{}", run_id())
}

// --- The events, as the consuming service models them. ---

/// Debezium: the `payload` column of the outbox row.
#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "outbox.event.order", name = "OrderCreated")]
struct OrderCreated {
    order_id: String,
    amount: i64,
}

/// A CloudEvent's data.
#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "billing.events", name = "com.example.billing.invoiced")]
struct Invoiced {
    invoice: String,
    amount: i64,
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "shipment.events", name = "com.example.shipment.Packed")]
struct Packed {
    shipment: String,
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "shipment.events", name = "com.example.shipment.Shipped")]
struct Shipped {
    shipment: String,
    carrier: String,
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "shipment.events", name = "com.example.shipment.Delivered")]
struct Delivered {
    shipment: String,
}

/// The shipment producer's identity: `event-id` (text) and Spring's `__TypeId__`. Set
/// on the container: the topics whose handlers name none use it.
fn shipment_identity() -> IdentitySource {
    IdentitySource::custom(|r| {
        let id = r.header_str("event-id").ok_or_else(|| IdentityError::Custom("no `event-id` header".into()))?;
        let mut identity = Identity::new(Identity::message_id_from_text(r.topic(), id));
        if let Some(t) = r.header_str("__TypeId__") {
            identity = identity.with_event_type(t);
        }
        Ok(identity)
    })
}

// --- The handlers: one effect row each, in the handler's transaction. ---

/// Distinct ids per kind, and all rows.
type Counts = (Vec<(String, i64)>, i64);

/// The effect rows, for either backend (the SQL is the same; sqlx's types differ).
trait Effects: Backend {
    /// Inserts one effect row in the handler's transaction.
    fn effect<'a>(conn: &'a mut Self::Connection, kind: &'a str, id: String) -> BoxFuture<'a, Result<(), sqlx::Error>>;
    /// Distinct ids per kind, and all rows, of this run.
    fn counts(pool: &sqlx::Pool<Self>) -> BoxFuture<'_, Result<Counts, sqlx::Error>>;
}

const INSERT: &str = "INSERT INTO interop_effect (run, kind, id) VALUES ($1, $2, $3)";
const DISTINCT: &str = "SELECT kind, count(DISTINCT id) FROM interop_effect WHERE run = $1 GROUP BY kind";
const ROWS: &str = "SELECT count(*) FROM interop_effect WHERE run = $1";

macro_rules! effects {
    ($db:ty) => {
        impl Effects for $db {
            fn effect<'a>(
                conn: &'a mut Self::Connection,
                kind: &'a str,
                id: String,
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin(
                    async move { sqlx::query(INSERT).bind(run_id()).bind(kind).bind(id).execute(conn).await.map(drop) },
                )
            }
            fn counts(pool: &sqlx::Pool<Self>) -> BoxFuture<'_, Result<Counts, sqlx::Error>> {
                Box::pin(async move {
                    let kinds = sqlx::query_as(DISTINCT).bind(run_id()).fetch_all(pool).await?;
                    let rows = sqlx::query_scalar(ROWS).bind(run_id()).fetch_one(pool).await?;
                    Ok((kinds, rows))
                })
            }
        }
    };
}
effects!(reliable_kafka::Postgres);
effects!(reliable_kafka::Sqlite);

#[event_handler(group = group(), topic = topic(OrderCreated::TOPIC), identity = IdentitySource::debezium())]
async fn on_order<DB: Effects>(e: OrderCreated, ctx: &mut HandlerContext<DB>) -> Result<(), HandlerError> {
    // Debezium's router keys the record by `aggregateid`.
    if ctx.record().key.as_deref() != Some(e.order_id.as_bytes()) {
        return Err(HandlerError::permanent(format!("key is not the aggregate id {}", e.order_id)));
    }
    Ok(DB::effect(ctx.tx(), "debezium", e.order_id).await?)
}

#[event_handler(group = group(), topic = topic(Invoiced::TOPIC), identity = IdentitySource::cloud_events())]
async fn on_invoiced<DB: Effects>(e: Invoiced, ctx: &mut HandlerContext<DB>) -> Result<(), HandlerError> {
    Ok(DB::effect(ctx.tx(), "cloudevents", e.invoice).await?)
}

#[event_handler(group = group(), topic = topic(Packed::TOPIC))]
async fn on_packed<DB: Effects>(e: Packed, ctx: &mut HandlerContext<DB>) -> Result<(), HandlerError> {
    Ok(DB::effect(ctx.tx(), "multi_type", format!("packed/{}", e.shipment)).await?)
}

#[event_handler(group = group(), topic = topic(Shipped::TOPIC))]
async fn on_shipped<DB: Effects>(e: Shipped, ctx: &mut HandlerContext<DB>) -> Result<(), HandlerError> {
    Ok(DB::effect(ctx.tx(), "multi_type", format!("shipped/{}/{}", e.shipment, e.carrier)).await?)
}

#[event_handler(group = group(), topic = topic(Delivered::TOPIC))]
async fn on_delivered<DB: Effects>(e: Delivered, ctx: &mut HandlerContext<DB>) -> Result<(), HandlerError> {
    Ok(DB::effect(ctx.tx(), "multi_type", format!("delivered/{}", e.shipment)).await?)
}

// --- The run. ---

/// Where the run's parts meet: the parent passes them to the consumer it kills.
#[derive(Debug, Clone)]
struct Setup {
    database_url: String,
    brokers: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,librdkafka=error".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    if let Ok(run) = std::env::var("INTEROP_CHILD_RUN") {
        // The first consumer, in a process of its own so it can be killed.
        RUN.set(run).expect("once");
        let setup =
            Setup { database_url: std::env::var("INTEROP_DATABASE_URL")?, brokers: std::env::var("INTEROP_BROKERS")? };
        return match AnyPool::connect(&setup.database_url, 4).await? {
            AnyPool::Postgres(pool) => consume_until_killed(pool, &setup).await,
            AnyPool::Sqlite(pool) => consume_until_killed(pool, &setup).await,
            _ => bail!("unsupported database"),
        };
    }
    RUN.set(Uuid::now_v7().simple().to_string()[20..].to_owned()).expect("once");
    let create = "CREATE TABLE IF NOT EXISTS interop_effect (run TEXT NOT NULL, kind TEXT NOT NULL, id TEXT NOT NULL)";
    match (std::env::var("DATABASE_URL"), std::env::var("KAFKA_BROKERS")) {
        (Ok(database_url), Ok(_)) => {
            let AnyPool::Postgres(pool) = AnyPool::connect(&database_url, 8).await? else {
                bail!("DATABASE_URL must be a postgres:// URL (unset both variables for the embedded defaults)")
            };
            let kafka = KafkaConfig::from_env();
            let specs: Vec<(String, i32, i32)> = topics().into_iter().map(|t| (t, 3, 1)).collect();
            kafka.ensure_topics(&specs).await?;
            sqlx::raw_sql(create).execute(&pool).await?;
            run(pool, Setup { database_url, brokers: kafka.brokers().to_owned() }).await
        }
        _ => {
            // Embedded: the mock cluster of this process (the child reaches it over
            // TCP), SQLite in a file both processes open.
            let cluster = EmbeddedKafka::start(1)?;
            let names = topics();
            let specs: Vec<(&str, i32)> = names.iter().map(|t| (t.as_str(), 3)).collect();
            cluster.create_topics(&specs)?;
            let file = std::env::temp_dir().join(format!("interop-{}.db", run_id()));
            let database_url = format!("sqlite:{}", file.display());
            let AnyPool::Sqlite(pool) = AnyPool::connect(&database_url, 4).await? else { unreachable!() };
            sqlx::raw_sql(create).execute(&pool).await?;
            let result = run(pool, Setup { database_url, brokers: cluster.bootstrap_servers().to_owned() }).await;
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
            result
        }
    }
}

/// The three topics and their dead-letter topics.
fn topics() -> Vec<String> {
    [OrderCreated::TOPIC, Invoiced::TOPIC, Packed::TOPIC]
        .into_iter()
        .flat_map(|t| [topic(t), format!("{}.DLQ", topic(t))])
        .collect()
}

/// The container of both consumers: five handlers, three identity sources.
fn container<DB: Effects>(
    pool: &sqlx::Pool<DB>,
    setup: &Setup,
) -> Result<ListenerContainer<DB>, reliable_kafka::Error> {
    let kafka = KafkaConfig::from_env()
        .set("bootstrap.servers", setup.brokers.as_str())
        // A killed member is noticed after this; tansu and the mock cluster take it.
        .set("session.timeout.ms", "6000")
        .set("fetch.wait.max.ms", "10");
    ListenerContainer::builder(kafka, pool.clone())
        .identity(shipment_identity())
        .handler(on_order)
        .handler(on_invoiced)
        .handler(on_packed)
        .handler(on_shipped)
        .handler(on_delivered)
        .max_batch(20)
        // Offsets are committed at shutdown only: the killed consumer commits none.
        .commit_interval(Duration::from_secs(3600))
        .build()
}

async fn consume_until_killed<DB: Effects>(pool: sqlx::Pool<DB>, setup: &Setup) -> anyhow::Result<()> {
    container(&pool, setup)?.run(reliable_kafka::CancellationToken::new()).await?;
    Ok(())
}

async fn run<DB: Effects>(pool: sqlx::Pool<DB>, setup: Setup) -> anyhow::Result<()> {
    reliable_kafka::migrate(&pool).await?;
    let produced = produce(&setup.brokers).await?;
    let expected = (DEBEZIUM + CLOUD_EVENTS + MULTI) as i64;

    // The first consumer, SIGKILLed once it has done half: no offset commit, no
    // leaving the group, as in a crash.
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .env("INTEROP_CHILD_RUN", run_id())
        .env("INTEROP_DATABASE_URL", &setup.database_url)
        .env("INTEROP_BROKERS", &setup.brokers)
        .spawn()
        .context("start the first consumer")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut before_kill = 0;
    while before_kill < expected / 2 {
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            bail!("the first consumer did not get half-way ({before_kill} of {expected} effects)");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        before_kill = DB::counts(&pool).await?.1;
    }
    child.kill()?;
    child.wait()?;
    let before_kill = DB::counts(&pool).await?.1;

    // The second one starts from the committed offsets, none: it sees every record.
    let second = container(&pool, &setup)?.spawn();
    let seen = |s: &reliable_kafka::ContainerStats| s.processed() + s.duplicates() + s.dead_lettered() + s.skipped();
    while seen(second.stats()) < produced && Instant::now() < deadline + Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (seen_after, skipped_as_duplicates) = (seen(second.stats()), second.stats().duplicates());
    let dead_lettered = second.stats().dead_lettered();
    second.shutdown().await?;

    let (kinds, rows) = DB::counts(&pool).await?;
    let count = |kind: &str| kinds.iter().find(|(k, _)| k == kind).map_or(0, |(_, n)| *n);
    let (debezium, cloudevents, multi) = (count("debezium"), count("cloudevents"), count("multi_type"));
    let lost = expected - (debezium + cloudevents + multi);
    let duplicated = rows - (debezium + cloudevents + multi);
    println!(
        "produced={produced} (of which {} producer retries) effects_before_kill={before_kill} \
         seen_after_restart={seen_after} skipped_as_duplicates={skipped_as_duplicates} dead_lettered={dead_lettered}",
        produced as i64 - expected
    );
    // The restarted consumer must have seen every record again (nothing committed), and
    // skipped every one whose effect the killed one had committed, plus the retries.
    let ok = lost == 0
        && duplicated == 0
        && dead_lettered == 0
        && seen_after == produced
        && skipped_as_duplicates >= before_kill as u64;
    let verdict = if ok { "ok" } else { "FAILED" };
    println!(
        "interop: {verdict} debezium={debezium} cloudevents={cloudevents} multi_type={multi} lost={lost} duplicated={duplicated}"
    );
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// Writes every record with a plain rdkafka producer, a tenth of them twice; returns
/// how many records were written.
async fn produce(brokers: &str) -> anyhow::Result<u64> {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "30000")
        .create()
        .context("create the plain producer")?;
    let mut records: Vec<(String, String, String, OwnedHeaders)> = Vec::new();
    for i in 0..DEBEZIUM {
        // Debezium's outbox event router: key = aggregateid, header `id` = the row's
        // event id, the `type` column placed as header `eventType`.
        let order = format!("order-{i}");
        let payload = serde_json::to_string(&OrderCreated { order_id: order.clone(), amount: 10 + i as i64 })?;
        let h = OwnedHeaders::new()
            .insert(Header { key: "id", value: Some(&Uuid::new_v4().to_string()) })
            .insert(Header { key: "eventType", value: Some("OrderCreated") });
        records.push((topic(OrderCreated::TOPIC), order, payload, h));
    }
    for i in 0..CLOUD_EVENTS {
        let payload = serde_json::to_string(&Invoiced { invoice: format!("inv-{i}"), amount: 5 })?;
        let h = OwnedHeaders::new()
            .insert(Header { key: "ce_specversion", value: Some("1.0") })
            .insert(Header { key: "ce_id", value: Some(&format!("inv-{i}")) })
            .insert(Header { key: "ce_source", value: Some("/billing") })
            .insert(Header { key: "ce_type", value: Some(Invoiced::EVENT_TYPE) })
            .insert(Header { key: "ce_time", value: Some("2026-12-01T12:00:00Z") })
            .insert(Header { key: "content-type", value: Some("application/json") });
        records.push((topic(Invoiced::TOPIC), format!("customer-{}", i % 7), payload, h));
    }
    for i in 0..MULTI {
        // Per shipment, in key order: packed, shipped, delivered.
        let shipment = format!("s-{}", i / 3);
        let (type_id, payload) = match i % 3 {
            0 => (Packed::EVENT_TYPE, serde_json::to_string(&Packed { shipment: shipment.clone() })?),
            1 => (
                Shipped::EVENT_TYPE,
                serde_json::to_string(&Shipped { shipment: shipment.clone(), carrier: "dhl".into() })?,
            ),
            _ => (Delivered::EVENT_TYPE, serde_json::to_string(&Delivered { shipment: shipment.clone() })?),
        };
        let h = OwnedHeaders::new()
            .insert(Header { key: "event-id", value: Some(&format!("shipment-event-{i}")) })
            .insert(Header { key: "__TypeId__", value: Some(type_id) });
        records.push((topic(Packed::TOPIC), shipment, payload, h));
    }
    let mut written = 0;
    for (i, (t, key, payload, headers)) in records.iter().enumerate() {
        // A tenth twice, as a producer retry after a lost acknowledgement would.
        for _ in 0..(1 + usize::from(i % 10 == 3)) {
            let record = FutureRecord::to(t).key(key).payload(payload).headers(headers.clone());
            producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).context("produce")?;
            written += 1;
        }
    }
    Ok(written)
}
