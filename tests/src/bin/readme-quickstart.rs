//! The README's quick start, compiled by the workspace build so it stays true.
#![allow(dead_code)]
use reliable_kafka::{
    event_handler, Event, ExponentialBackOff, HandlerContext, HandlerError, KafkaConfig, ListenerContainer, Outbox,
    OutboxRelay,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Serialize, Deserialize, Event)]
#[event(topic = "payment.failed", key = reservation_id, version = 1)]
struct PaymentFailed {
    payment_id: i64,
    reservation_id: i64,
}

#[event_handler(group = "payment-compensator-group",
                backoff = ExponentialBackOff::builder().initial(Duration::from_millis(100)).max_attempts(5).jitter(0.2).build())]
async fn compensate(event: PaymentFailed, ctx: &mut HandlerContext) -> Result<(), HandlerError> {
    sqlx::query("UPDATE payment SET status = 'FAILED' WHERE id = $1")
        .bind(event.payment_id)
        .execute(ctx.tx()) // commits together with the dedup row
        .await?; // sqlx errors are classified transient / permanent
    Ok(())
}

async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    reliable_kafka::migrate(&pool).await?; // rk_outbox, rk_processed_messages
    let kafka = KafkaConfig::from_env(); // KAFKA_BROKERS
    let relay = OutboxRelay::builder(pool.clone(), kafka.clone()).build()?.spawn();
    let consumer = ListenerContainer::builder(kafka, pool.clone()).handler(compensate).build()?.spawn();

    let mut tx = pool.begin().await?;
    // ... your business writes in tx ...
    Outbox::new().enqueue(&mut tx, &PaymentFailed { payment_id: 7, reservation_id: 3 }).await?;
    tx.commit().await?;

    consumer.shutdown().await?; // finishes the record in hand, commits offsets
    relay.shutdown().await; // flushes the producer
    Ok(())
}

fn main() {}
