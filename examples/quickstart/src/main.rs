//! reliable-kafka in one file, on the embedded defaults (SQLite in memory, librdkafka's
//! in-process mock cluster): `cargo run -p quickstart`. For production, connect a
//! `PgPool` and use `KafkaConfig::from_env()`; the rest stays the same.
use reliable_kafka::{event_handler, AnyPool, EmbeddedKafka, Event, FixedBackOff, HandlerContext, HandlerError};
use reliable_kafka::{ListenerContainer, Outbox, OutboxRelay, Sqlite};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "order.placed", key = order_id)]
struct OrderPlaced {
    order_id: i64,
    amount: i64,
}

/// 3 attempts 100 ms apart for transient errors; a permanent error goes straight to
/// the dead-letter topic `order.placed.DLQ`.
#[event_handler(group = "shipping", backoff = FixedBackOff::new(Duration::from_millis(100), 3))]
async fn ship(event: OrderPlaced, ctx: &mut HandlerContext<Sqlite>) -> Result<(), HandlerError> {
    if event.amount <= 0 {
        return Err(HandlerError::permanent(format!("order {} has no amount", event.order_id)));
    }
    sqlx::query("INSERT INTO shipment (order_id) VALUES ($1)")
        .bind(event.order_id)
        .execute(ctx.tx()) // commits with the dedup row: once per message id
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster = EmbeddedKafka::start(1)?;
    cluster.create_topics(&[("order.placed", 3), ("order.placed.DLQ", 3)])?;
    let kafka = cluster.config();
    let AnyPool::Sqlite(pool) = AnyPool::connect("sqlite::memory:", 1).await? else { unreachable!() };
    reliable_kafka::migrate(&pool).await?; // rk_outbox, rk_processed_messages, rk_parked_messages
    sqlx::raw_sql(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL);
                   CREATE TABLE shipment (order_id INTEGER PRIMARY KEY);",
    )
    .execute(&pool)
    .await?;

    let relay = OutboxRelay::builder(kafka.clone(), pool.clone()).poll_interval(Duration::from_millis(50)).build()?;
    let relay = relay.spawn();
    let consumer = ListenerContainer::builder(kafka, pool.clone()).handler(ship).build()?.spawn();

    for (id, amount) in [(1, 30), (2, 45), (3, 0)] {
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO orders (id, amount) VALUES ($1, $2)").bind(id).bind(amount).execute(&mut *tx).await?;
        Outbox::new().enqueue(&mut tx, &OrderPlaced { order_id: id, amount }).await?; // same transaction
        tx.commit().await?; // the event exists if and only if the order does
    }

    while consumer.stats().processed() + consumer.stats().dead_lettered() < 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shipped: Vec<i64> = sqlx::query_scalar("SELECT order_id FROM shipment ORDER BY 1").fetch_all(&pool).await?;
    println!("shipped={shipped:?} dead_lettered={}", consumer.stats().dead_lettered());
    consumer.shutdown().await?; // finishes the record in hand, commits offsets
    relay.shutdown().await?; // flushes the producer
    Ok(())
}
