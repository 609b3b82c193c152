//! What the benchmarks share: the handler of the consumer benchmarks (the ratios
//! command's R1–R3 and R6, and `benches/consumer.rs`).

pub mod instrumented;

use futures::future::BoxFuture;
use reliable_kafka::{EventHandler, HandlerContext, HandlerError, HandlerOptions};
use reliable_kafka_tests::{insert_effects, Work};

/// A handler that does nothing (R1), or inserts one business row per record (R2, R3,
/// R6): one statement per record in `handle`, one multi-row statement per batch in
/// `handle_batch` unless `per_record`.
pub struct Bench {
    /// Topic consumed.
    pub topic: String,
    /// Consumer group.
    pub group: String,
    /// Insert one `effects` row per record (else do nothing).
    pub insert: bool,
    /// Insert row by row within a batch (else one multi-row statement per batch).
    pub per_record: bool,
}

impl EventHandler for Bench {
    type Event = Work;
    fn options(&self) -> HandlerOptions {
        HandlerOptions::new().topic(self.topic.clone()).group(self.group.clone())
    }
    fn handle<'a>(&'a self, event: Work, ctx: &'a mut HandlerContext) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if self.insert {
                sqlx::query("INSERT INTO effects (message_id, key, n) VALUES ($1, $2, $3)")
                    .bind(ctx.message_id())
                    .bind(&event.key)
                    .bind(event.n as i32)
                    .execute(ctx.tx())
                    .await?;
            }
            Ok(())
        })
    }
    fn handle_batch<'a>(
        &'a self,
        events: Vec<(Work, reliable_kafka::RecordInfo)>,
        ctx: &'a mut HandlerContext,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if !self.insert {
                return Ok(());
            }
            if self.per_record {
                for (event, record) in events {
                    sqlx::query("INSERT INTO effects (message_id, key, n) VALUES ($1, $2, $3)")
                        .bind(record.message_id)
                        .bind(&event.key)
                        .bind(event.n as i32)
                        .execute(ctx.tx())
                        .await?;
                }
                return Ok(());
            }
            insert_effects(ctx.tx(), &events).await?;
            Ok(())
        })
    }
}
