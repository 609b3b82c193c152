//! The two consumer groups of `payment.failed` (seed 000).

use std::time::Duration;

use futures::future::BoxFuture;
use reliable_kafka::{
    event_handler, EventHandler, ExponentialBackOff, FixedBackOff, HandlerContext, HandlerError, HandlerOptions,
    RedisDedup,
};

use crate::db::{AppBackend, NOW_LITE};
use crate::events::{CouponIssueRequested, OrderPlaced, PaymentFailed};
use crate::sql;
use crate::store::Store;

/// Consumer group restoring the database.
pub const COMPENSATOR_GROUP: &str = "payment-compensator-group";
/// Consumer group cleaning Redis.
pub const CLEANUP_GROUP: &str = "post-payment-cleanup-group";

/// Retries of the compensation: 100 ms doubling to 2 s, ±20 % jitter, 6 attempts.
///
/// # Errors
/// None with these constants; the builder validates them.
pub fn compensation_backoff() -> Result<ExponentialBackOff, reliable_kafka::ConfigError> {
    ExponentialBackOff::builder()
        .initial(Duration::from_millis(100))
        .multiplier(2.0)
        .max_interval(Duration::from_secs(2))
        .max_attempts(6)
        .jitter(0.2)
        .build()
}

/// Restores the database after a failed payment: payment and reservation `FAILED`,
/// seat `AVAILABLE`, the date's available seat count + 1, and a refund if the user was
/// charged. All of it commits with the deduplication row, so a redelivered event
/// changes nothing; the updates themselves are deliberately unguarded so that a
/// duplicate effect would show in the scenario's consistency report.
#[event_handler(group = "payment-compensator-group", backoff = compensation_backoff())]
pub async fn compensate_payment<DB: AppBackend>(
    event: PaymentFailed,
    ctx: &mut HandlerContext<DB>,
) -> Result<(), HandlerError> {
    let mut tx = DB::ex(ctx.tx());
    let payment_lite = format!("UPDATE payment SET status = 'FAILED', compensated_at = {NOW_LITE} WHERE id = $1");
    let found = sql!(
        tx.re(),
        query(("UPDATE payment SET status = 'FAILED', compensated_at = now() WHERE id = $1", payment_lite.as_str()))
            .bind(event.payment_id)
            .execute()
    )?;
    if found == 0 {
        return Err(HandlerError::permanent(format!("payment {} does not exist", event.payment_id)));
    }
    let reservation_lite = format!("UPDATE reservation SET status = 'FAILED', updated_at = {NOW_LITE} WHERE id = $1");
    sql!(
        tx.re(),
        query((
            "UPDATE reservation SET status = 'FAILED', updated_at = now() WHERE id = $1",
            reservation_lite.as_str()
        ))
        .bind(event.reservation_id)
        .execute()
    )?;
    sql!(tx.re(), query("UPDATE seat SET status = 'AVAILABLE' WHERE id = $1").bind(event.seat_id).execute())?;
    sql!(
        tx.re(),
        query("UPDATE concert_date SET available_seat_count = available_seat_count + 1 WHERE id = $1")
            .bind(event.concert_date_id)
            .execute()
    )?;
    if event.charged {
        sql!(
            tx.re(),
            query("UPDATE app_user SET balance = balance + $2 WHERE id = $1")
                .bind(event.user_id)
                .bind(event.amount)
                .execute()
        )?;
        sql!(
            tx.re(),
            query("INSERT INTO point_history (user_id, payment_id, kind, amount) VALUES ($1, $2, 'REFUND', $3)")
                .bind(event.user_id)
                .bind(event.payment_id)
                .bind(event.amount)
                .execute()
        )?;
    }
    Ok(())
}

/// Cleans Redis after a failed payment: releases the seat hold and expires the queue
/// token, each only if it still belongs to this payment (compare-and-delete), so a
/// redelivery never touches a newer hold or token.
///
/// On Redis, the group is deduplicated in Redis ([`RedisDedup`]): the message id is
/// claimed in the same `MULTI`/`EXEC` as the deletes, so the cleanup needs no database
/// and keeps working while PostgreSQL is down (seed 000: "if the database or Redis
/// fails, the other compensation still happens"). On the in-process store it is
/// deduplicated in the database, as every other group.
///
/// A handler with state (the Redis connection) implements [`EventHandler`] by hand.
#[derive(Debug, Clone)]
pub struct RedisCleanup {
    /// The store.
    pub store: Store,
    /// Deduplication in Redis, when the store is on Redis.
    pub dedup: Option<RedisDedup>,
}

impl RedisCleanup {
    /// The cleanup on `store`, deduplicated in Redis when the store is on Redis.
    pub fn new(store: Store) -> Self {
        let dedup = store.redis_client().map(|c| RedisDedup::new(c.clone()).key_prefix(store.processed_prefix()));
        RedisCleanup { store, dedup }
    }
}

impl<DB: reliable_kafka::Backend> EventHandler<DB> for RedisCleanup {
    type Event = PaymentFailed;

    fn options(&self) -> HandlerOptions {
        // Seed 001: FixedBackOff(1000 ms, 3 retries), i.e. 4 attempts.
        let options = HandlerOptions::new().group(CLEANUP_GROUP).backoff(FixedBackOff::new(Duration::from_secs(1), 4));
        match &self.dedup {
            Some(dedup) => options.redis_dedup(dedup.clone()),
            None => options,
        }
    }

    fn handle<'a>(
        &'a self,
        event: PaymentFailed,
        ctx: &'a mut HandlerContext<DB>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if self.dedup.is_some() {
                // Compare-and-delete inside the transaction: what was read is watched,
                // so a hold or token replaced before EXEC aborts it and the attempt
                // runs again.
                let (hold, token) = (self.store.hold_key(event.seat_id), self.store.token_key(event.user_id));
                let tx = ctx.redis();
                tx.watch(&[&hold, &token]).await.map_err(HandlerError::transient)?;
                let (held_by, active): (Option<String>, Option<String>) = redis::pipe()
                    .get(&hold)
                    .get(&token)
                    .query_async(tx.connection())
                    .await
                    .map_err(HandlerError::transient)?;
                if held_by == Some(event.user_id.to_string()) {
                    tx.pipeline().del(&hold).ignore();
                }
                if active.as_deref() == Some(event.queue_token.as_str()) {
                    tx.pipeline().del(&token).ignore();
                }
                return Ok(());
            }
            self.store.release_hold(event.seat_id, event.user_id).await.map_err(HandlerError::transient)?;
            self.store.expire_token(event.user_id, &event.queue_token).await.map_err(HandlerError::transient)?;
            Ok(())
        })
    }
}

/// Consumer group storing order information (seed 001).
pub const ORDER_INFO_GROUP: &str = "order-info-group";
/// Consumer group sending order alerts (seed 001).
pub const ORDER_ALERT_GROUP: &str = "order-alert-group";
/// Consumer group issuing coupons (seed 001).
pub const COUPON_GROUP: &str = "coupon-issue-group";

/// Stores the order information of a placed order (`trace-topic`).
#[event_handler(group = "order-info-group", backoff = FixedBackOff::new(Duration::from_secs(1), 4))]
pub async fn store_order_info<DB: AppBackend>(
    event: OrderPlaced,
    ctx: &mut HandlerContext<DB>,
) -> Result<(), HandlerError> {
    sql!(
        DB::ex(ctx.tx()),
        query("INSERT INTO order_info (payment_id, user_id, seat_id, amount) VALUES ($1, $2, $3, $4)")
            .bind(event.payment_id)
            .bind(event.user_id)
            .bind(event.seat_id)
            .bind(event.amount)
            .execute()
    )?;
    Ok(())
}

/// Creates the coupon granted by a request (`coupon-topic`). The unique constraint on
/// `(coupon_id, user_id)` is the second line of defence behind the deduplication table:
/// even a re-published request issues nothing twice.
#[event_handler(group = "coupon-issue-group", backoff = FixedBackOff::new(Duration::from_secs(1), 4))]
pub async fn issue_coupon<DB: AppBackend>(
    event: CouponIssueRequested,
    ctx: &mut HandlerContext<DB>,
) -> Result<(), HandlerError> {
    let code = format!("C{}-U{}-{}", event.coupon_id, event.user_id, &ctx.message_id().simple().to_string()[..8]);
    sql!(
        DB::ex(ctx.tx()),
        query(
            "INSERT INTO coupon (coupon_id, user_id, code) VALUES ($1, $2, $3) ON CONFLICT (coupon_id, user_id) DO NOTHING"
        )
        .bind(event.coupon_id)
        .bind(event.user_id)
        .bind(&code)
        .execute()
    )?;
    Ok(())
}
