//! Seed 002's "payment use case without the Payment domain": with
//! [`PaymentCreation::Event`], the payment use case charges the points, confirms the
//! reservation and writes a [`PaymentRequested`] event to the outbox, in one
//! transaction, and answers; the `payment-create-group` consumer ([`create_payment`])
//! creates the payment record from the event, in its own transaction, with the events
//! that follow a payment (`payment.completed`, `OrderPlaced`, or `payment.failed`).
//!
//! A slow or failing payment write then no longer holds up or fails the use case,
//! which is what seed 002 moves it out for. It is not the default: seed 004 adds an
//! external payment gateway and a recovery scheduler that asks the gateway about
//! payments stuck `IN_PROGRESS`; the gateway is charged for a payment id, so that
//! payment must exist before the call, in the use case's transaction. In this mode the
//! points are the whole payment, as in seed 002, and the gateway is not called.

use reliable_kafka::{event_handler, HandlerContext, HandlerError, Outbox};
use uuid::Uuid;

use crate::booking::{
    fail_uncharged, finalize, insert_payment, AfterCommit, BookingError, NewPayment, Outcome, PaymentView,
    INSUFFICIENT_BALANCE,
};
use crate::db::{AppBackend, Db, Ex, NOW_LITE};
use crate::events::PaymentRequested;
use crate::sql;

/// Consumer group creating payments from [`PaymentRequested`] (seed 002).
pub const PAYMENT_CREATE_GROUP: &str = "payment-create-group";

/// Where the payment record is created (`PAYMENT_CREATION`, `--payment-creation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PaymentCreation {
    /// In the use case's transaction, `IN_PROGRESS`, before the payment gateway is
    /// charged for it (seed 004); the gateway's answer finalizes it.
    #[default]
    UseCase,
    /// By the `payment-create-group` consumer, from the [`PaymentRequested`] event the
    /// use case writes to the outbox (seed 002); points only, no gateway.
    Event,
}

/// What the use case accepted: the checkout's key, and whether the points were charged.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub(crate) key: Uuid,
    pub(crate) reservation_id: i64,
    pub(crate) user_id: i64,
    pub(crate) amount: i64,
    pub(crate) charged: bool,
}

/// The rest of the use case in `tx`, after the points were charged or found short:
/// reservation `CONFIRMED` and seat `SOLD` (charged) or reservation `FAILED` (not
/// charged, the seat is released by the compensation), and [`PaymentRequested`]
/// enqueued. Returns the Redis clean-up to run after commit when charged (seed 002:
/// token expiry in-process).
///
/// # Errors
/// Database and outbox errors.
pub(crate) async fn accept(outbox: &Outbox, mut tx: Ex<'_>, a: &Accepted) -> Result<Option<AfterCommit>, BookingError> {
    let (seat_id, concert_date_id, queue_token): (i64, i64, Option<String>) = sql!(
        tx.re(),
        query_as("SELECT seat_id, concert_date_id, queue_token FROM reservation WHERE id = $1")
            .bind(a.reservation_id)
            .fetch_one()
    )?;
    let status = if a.charged { "CONFIRMED" } else { "FAILED" };
    let lite = format!("UPDATE reservation SET status = $2, updated_at = {NOW_LITE} WHERE id = $1");
    sql!(
        tx.re(),
        query(("UPDATE reservation SET status = $2, updated_at = now() WHERE id = $1", lite.as_str()))
            .bind(a.reservation_id)
            .bind(status)
            .execute()
    )?;
    if a.charged {
        sql!(tx.re(), query("UPDATE seat SET status = 'SOLD' WHERE id = $1").bind(seat_id).execute())?;
    }
    let event = PaymentRequested {
        idempotency_key: a.key,
        reservation_id: a.reservation_id,
        user_id: a.user_id,
        seat_id,
        concert_date_id,
        amount: a.amount,
        charged: a.charged,
        queue_token: queue_token.clone().unwrap_or_default(),
    };
    tx.enqueue(outbox, &event).await?;
    Ok(a.charged.then(|| AfterCommit::new(seat_id, a.user_id, queue_token)))
}

/// The answer to the payment request of `key`, the same for every repetition: status
/// `ACCEPTED` (charged, reservation confirmed, the payment record on its way) or
/// `FAILED` (insufficient balance), `payment_id` null.
///
/// # Errors
/// [`BookingError::NotFound`] for a key never used for a payment; database errors.
pub(crate) async fn answer(pool: &Db, key: Uuid) -> Result<PaymentView, BookingError> {
    let row: Option<(i64, String, i64)> = sql!(
        pool,
        query_as(
            "SELECT r.id, r.status, s.price FROM checkout c JOIN reservation r ON r.id = c.reservation_id \
             JOIN seat s ON s.id = r.seat_id WHERE c.idempotency_key = $1 AND c.request_body IS NOT NULL"
        )
        .bind(key)
        .fetch_optional()
    )?;
    let Some((reservation_id, status, amount)) = row else {
        return Err(BookingError::NotFound { what: "payment for key", id: key.to_string() });
    };
    let accepted = status == "CONFIRMED";
    Ok(PaymentView {
        payment_id: None,
        reservation_id,
        status: if accepted { "ACCEPTED" } else { "FAILED" }.to_owned(),
        amount,
        failure_reason: (!accepted).then(|| INSUFFICIENT_BALANCE.to_owned()),
    })
}

/// Creates the payment of a [`PaymentRequested`] (seed 002): the record and its
/// history, the `CHARGE` line of the point history, then, as the gateway's answer
/// would in the default mode, `COMPLETED` with `payment.completed` and `OrderPlaced`
/// enqueued, or `FAILED` with `payment.failed` (nothing was charged; the compensation
/// releases the seat). All of it commits with the deduplication row; the payment's
/// unique idempotency key fences a second creation.
#[event_handler(group = "payment-create-group", backoff = crate::handlers::compensation_backoff())]
pub async fn create_payment<DB: AppBackend>(
    event: PaymentRequested,
    ctx: &mut HandlerContext<DB>,
) -> Result<(), HandlerError> {
    let outbox = Outbox::new();
    let mut tx = DB::ex(ctx.tx());
    let payment = NewPayment {
        reservation_id: event.reservation_id,
        user_id: event.user_id,
        amount: event.amount,
        charged: event.charged,
        key: event.idempotency_key,
    };
    let payment_id = insert_payment(tx.re(), payment).await.map_err(handler_error)?;
    if event.charged {
        // The use case released the hold and expired the token after its commit.
        let _after_commit =
            finalize(tx.re(), &outbox, payment_id, Outcome::Approved, "paid in points").await.map_err(handler_error)?;
    } else {
        fail_uncharged(&outbox, tx.re(), payment_id).await.map_err(handler_error)?;
    }
    Ok(())
}

/// Database and outbox errors keep their classification (transient ones are retried);
/// anything else is permanent.
fn handler_error(e: BookingError) -> HandlerError {
    match e {
        BookingError::Database(e) => e.into(),
        BookingError::Outbox(e) => e.into(),
        other => HandlerError::permanent(other),
    }
}
