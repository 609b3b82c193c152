//! The README's quick start with its three production changes: a `PgPool`,
//! `KafkaConfig::from_env()`, and `HandlerContext` (PostgreSQL). Each run uses its own
//! topic, consumer group and tables, so it can run again on the same services.
use reliable_kafka::{event_handler, Event, FixedBackOff, HandlerContext, HandlerError, HandlerOptions, KafkaConfig};
use reliable_kafka::{EnqueueOptions, ListenerContainer, Operations, Outbox, OutboxRelay};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(topic = "order.placed", key = order_id)]
struct OrderPlaced {
    order_id: i64,
    amount: i64,
}

#[event_handler(group = "shipping", backoff = FixedBackOff::new(Duration::from_millis(100), 3))]
async fn ship(event: OrderPlaced, ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    if event.amount <= 0 {
        return Err(HandlerError::permanent(format!("order {} has no amount", event.order_id)));
    }
    sqlx::query("INSERT INTO shipment (order_id) VALUES ($1)").bind(event.order_id).execute(ctx.tx()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let (topic, group, schema) = (format!("order.placed.{run}"), format!("shipping-{run}"), format!("ext_{run}"));
    let url = std::env::var("DATABASE_URL")?;
    let admin = sqlx::PgPool::connect(&url).await?;
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(5)
        .after_connect({
            let schema = schema.clone();
            move |conn, _| {
                let set = format!("SET search_path TO {schema}");
                Box::pin(async move { sqlx::query(&set).execute(conn).await.map(|_| ()) })
            }
        })
        .connect(&url)
        .await?;
    reliable_kafka::migrate(&pool).await?;
    sqlx::raw_sql("CREATE TABLE orders (id bigint PRIMARY KEY, amount bigint NOT NULL); CREATE TABLE shipment (order_id bigint PRIMARY KEY);")
        .execute(&pool)
        .await?;
    let kafka = KafkaConfig::from_env().set("fetch.wait.max.ms", "10");
    let dlq = format!("{topic}.DLQ");
    kafka.ensure_topics(&[(topic.as_str(), 3, 1), (dlq.as_str(), 3, 1)]).await?;

    let relay = OutboxRelay::builder(kafka.clone(), pool.clone()).poll_interval(Duration::from_millis(50)).build()?.spawn();
    let options = HandlerOptions::new().topic(topic.clone()).group(group.clone());
    let consumer = ListenerContainer::builder(kafka, pool.clone()).handler_with(ship, options).build()?.spawn();
    for (id, amount) in [(1, 30), (2, 45), (3, 0)] {
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO orders (id, amount) VALUES ($1, $2)").bind(id).bind(amount).execute(&mut *tx).await?;
        let to = EnqueueOptions { topic: Some(topic.clone()), ..Default::default() };
        Outbox::new().enqueue_with(&mut tx, &OrderPlaced { order_id: id, amount }, to).await?;
        tx.commit().await?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while consumer.stats().processed() + consumer.stats().dead_lettered() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shipped: Vec<i64> = sqlx::query_scalar("SELECT order_id FROM shipment ORDER BY 1").fetch_all(&pool).await?;
    let backlog = Operations::new(pool.clone()).outbox_backlog().await?;
    println!("shipped={shipped:?} dead_lettered={} pending={}", consumer.stats().dead_lettered(), backlog.pending);
    consumer.shutdown().await?;
    relay.shutdown().await?;
    pool.close().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await?;
    Ok(())
}
