//! Booking and payment: the writes of the application.
//!
//! - [`Booking::reserve`]: seat hold in Redis, seat and reservation in one transaction.
//! - [`Booking::open_checkout`]: the idempotency key of an order page (seed 004).
//! - [`Booking::pay`]: the checkout, idempotent on that key; charges the balance,
//!   asks the payment gateway, and finalizes with [`finalize`], which writes the
//!   outcome and its events (outbox) in one transaction.

use std::time::Duration;

use reliable_kafka::Outbox;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::{Db, Ex, NOW_LITE};
use crate::events::{OrderPlaced, PaymentCompleted, PaymentFailed};
use crate::gateway::{ChargeStatus, GatewayClient, GatewayError};
pub use crate::payment_event::PaymentCreation;
use crate::sql;
use crate::store::Store;

/// Errors of booking and payment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BookingError {
    /// The queue token is missing, expired or not the user's.
    #[error("queue token is not active for user {user_id}")]
    InvalidToken {
        /// The user.
        user_id: i64,
    },
    /// Someone else holds or reserved the seat.
    #[error("seat {seat_id} is not available")]
    SeatTaken {
        /// The seat.
        seat_id: i64,
    },
    /// No such reservation, payment, user or checkout.
    #[error("{what} {id} does not exist")]
    NotFound {
        /// Kind of thing.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The reservation is not waiting for payment (paid, failed, or another user's).
    #[error("reservation {reservation_id} cannot be paid: it is {status}")]
    NotPayable {
        /// The reservation.
        reservation_id: i64,
        /// Its status.
        status: String,
    },
    /// The idempotency key was used before with a different request body.
    #[error("idempotency key {key} was already used with a different request")]
    KeyReused {
        /// The key.
        key: Uuid,
    },
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// The key-value store (Redis) failed.
    #[error("store error")]
    Store(#[from] crate::store::StoreError),
    /// Writing the outbox or beginning a transaction ([`crate::db::Db::begin`]) failed.
    #[error("outbox or transaction error")]
    Outbox(#[from] reliable_kafka::Error),
}

/// A seat reserved and waiting for payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Reservation {
    /// Reservation id.
    pub id: i64,
    /// User.
    pub user_id: i64,
    /// Seat.
    pub seat_id: i64,
    /// Concert date.
    pub concert_date_id: i64,
    /// `PENDING`, `CONFIRMED` or `FAILED`.
    pub status: String,
}

/// Body of a payment request; what the idempotency key is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayRequest {
    /// Reservation to pay.
    pub reservation_id: i64,
    /// Paying user.
    pub user_id: i64,
}

/// A payment as the API returns it; the same for every repetition of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct PaymentView {
    /// Payment id; `null` while the `payment-create-group` has not created the payment
    /// yet ([`PaymentCreation::Event`]).
    pub payment_id: Option<i64>,
    /// Reservation.
    pub reservation_id: i64,
    /// `IN_PROGRESS`, `COMPLETED` or `FAILED`; `ACCEPTED` with
    /// [`PaymentCreation::Event`]: points charged and reservation confirmed, the payment
    /// record being created.
    pub status: String,
    /// Amount in points.
    pub amount: i64,
    /// Why it failed, if it did.
    pub failure_reason: Option<String>,
}

/// What a payment ended as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The gateway approved.
    Approved,
    /// The gateway declined, or never received the charge (recovery).
    Declined,
}

/// The booking service.
#[derive(Debug, Clone)]
pub struct Booking {
    pool: Db,
    store: Store,
    gateway: GatewayClient,
    outbox: Outbox,
    /// How long a repeated request waits for the first one's outcome.
    pub duplicate_wait: Duration,
    /// Where the payment record is created (default: in the use case).
    pub creation: PaymentCreation,
}

const PAYMENT_VIEW: &str =
    "SELECT id AS payment_id, reservation_id, status, amount, failure_reason FROM payment WHERE ";

impl Booking {
    /// A service on `pool`, `store` and `gateway`.
    pub fn new(pool: Db, store: Store, gateway: GatewayClient) -> Self {
        Booking {
            pool,
            store,
            gateway,
            outbox: Outbox::new(),
            duplicate_wait: Duration::from_secs(5),
            creation: PaymentCreation::UseCase,
        }
    }

    /// The database pool.
    pub fn pool(&self) -> &Db {
        &self.pool
    }

    /// The Redis store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Issues the user's waiting-queue token.
    ///
    /// # Errors
    /// [`BookingError::NotFound`] for an unknown user; Redis errors.
    pub async fn enter_queue(&self, user_id: i64) -> Result<String, BookingError> {
        let exists: bool = sql!(
            &self.pool,
            query_scalar("SELECT EXISTS (SELECT 1 FROM app_user WHERE id = $1)").bind(user_id).fetch_one()
        )?;
        if !exists {
            return Err(BookingError::NotFound { what: "user", id: user_id.to_string() });
        }
        Ok(self.store.issue_token(user_id).await?)
    }

    /// Holds the seat in Redis (`SET NX` with TTL) and reserves it in the database:
    /// seat `AVAILABLE → RESERVED`, the date's `available_seat_count - 1`, a `PENDING`
    /// reservation. Needs the user's active queue token.
    ///
    /// # Errors
    /// [`BookingError::InvalidToken`], [`BookingError::SeatTaken`].
    pub async fn reserve(&self, user_id: i64, seat_id: i64, queue_token: &str) -> Result<Reservation, BookingError> {
        if !self.store.token_is_active(user_id, queue_token).await? {
            return Err(BookingError::InvalidToken { user_id });
        }
        let Some(fresh_hold) = self.store.hold_seat(seat_id, user_id).await? else {
            return Err(BookingError::SeatTaken { seat_id });
        };
        let result = async {
            let mut tx = self.pool.begin().await?;
            // The row lock the update takes keeps the seat ours until commit.
            let reserved = sql!(
                &mut tx,
                query("UPDATE seat SET status = 'RESERVED' WHERE id = $1 AND status = 'AVAILABLE'")
                    .bind(seat_id)
                    .execute()
            )? == 1;
            let seat: Option<i64> = if reserved {
                sql!(
                    &mut tx,
                    query_scalar("SELECT concert_date_id FROM seat WHERE id = $1").bind(seat_id).fetch_optional()
                )?
            } else {
                None
            };
            let Some(concert_date_id) = seat else {
                let exists: bool = sql!(
                    &mut tx,
                    query_scalar("SELECT EXISTS (SELECT 1 FROM seat WHERE id = $1)").bind(seat_id).fetch_one()
                )?;
                return Err(if exists {
                    BookingError::SeatTaken { seat_id }
                } else {
                    BookingError::NotFound { what: "seat", id: seat_id.to_string() }
                });
            };
            sql!(
                &mut tx,
                query("UPDATE concert_date SET available_seat_count = available_seat_count - 1 WHERE id = $1")
                    .bind(concert_date_id)
                    .execute()
            )?;
            // MariaDB's `INSERT … RETURNING` names no columns in its prepared statement, so
            // the reservation is read by the id it returns.
            let id: i64 = sql!(
                &mut tx,
                query_scalar(
                    "INSERT INTO reservation (user_id, seat_id, concert_date_id, status, queue_token) \
                     VALUES ($1, $2, $3, 'PENDING', $4) RETURNING id"
                )
                .bind(user_id)
                .bind(seat_id)
                .bind(concert_date_id)
                .bind(queue_token)
                .fetch_one()
            )?;
            let r: Reservation = sql!(
                &mut tx,
                query_as("SELECT id, user_id, seat_id, concert_date_id, status FROM reservation WHERE id = $1")
                    .bind(id)
                    .fetch_one()
            )?;
            tx.commit().await?;
            Ok(r)
        }
        .await;
        // Only the request that set the hold gives it back (a concurrent retry of the
        // same user may own the reservation).
        if result.is_err() && fresh_hold {
            let _ = self.store.release_hold(seat_id, user_id).await;
        }
        result
    }

    /// A reservation.
    ///
    /// # Errors
    /// [`BookingError::NotFound`].
    pub async fn reservation(&self, id: i64) -> Result<Reservation, BookingError> {
        sql!(
            &self.pool,
            query_as("SELECT id, user_id, seat_id, concert_date_id, status FROM reservation WHERE id = $1")
                .bind(id)
                .fetch_optional()
        )?
        .ok_or(BookingError::NotFound { what: "reservation", id: id.to_string() })
    }

    /// A payment.
    ///
    /// # Errors
    /// [`BookingError::NotFound`].
    pub async fn payment(&self, id: i64) -> Result<PaymentView, BookingError> {
        let q = format!("{PAYMENT_VIEW} id = $1");
        sql!(&self.pool, query_as(&q).bind(id).fetch_optional())?
            .ok_or(BookingError::NotFound { what: "payment", id: id.to_string() })
    }

    /// Opens the order page of a reservation: returns a new idempotency key for its
    /// payment request.
    ///
    /// # Errors
    /// [`BookingError::NotFound`] for an unknown reservation.
    pub async fn open_checkout(&self, reservation_id: i64) -> Result<Uuid, BookingError> {
        self.reservation(reservation_id).await?;
        let key = Uuid::now_v7();
        sql!(
            &self.pool,
            query("INSERT INTO checkout (idempotency_key, reservation_id) VALUES ($1, $2)")
                .bind(key)
                .bind(reservation_id)
                .execute()
        )?;
        Ok(key)
    }

    /// Pays, once per idempotency key: the same request sent N times, concurrently or
    /// in sequence, makes one payment and gets the same answer (a repetition waits up
    /// to `duplicate_wait` for the first request's outcome). A different body under the
    /// same key is rejected.
    ///
    /// In one transaction: bind the key to the body, charge the balance, store the
    /// payment `IN_PROGRESS`. Then the gateway is asked; its answer is written by
    /// [`finalize`]. Without an answer (timeout, gateway down) the payment stays
    /// `IN_PROGRESS` and the recovery scheduler settles it. Insufficient balance fails
    /// the payment at once (`payment.failed`, nothing charged).
    ///
    /// With [`PaymentCreation::Event`] (seed 002) no payment is written and the gateway
    /// is not asked: the points are charged, the reservation confirmed (or failed, when
    /// the points are short) and `PaymentRequested` enqueued, and the answer is
    /// `ACCEPTED` (or `FAILED`) with no payment id; see [`crate::payment_event`].
    ///
    /// # Errors
    /// [`BookingError::NotFound`] (key), [`BookingError::KeyReused`],
    /// [`BookingError::NotPayable`], database and outbox errors.
    pub async fn pay(&self, key: Uuid, req: &PayRequest) -> Result<PaymentView, BookingError> {
        let body = serde_json::to_value(req).expect("serializable");
        let mut tx = self.pool.begin().await?;
        // The row lock (SQLite: the write lock of BEGIN IMMEDIATE) makes repetitions of
        // the same key wait for the first one's commit.
        let checkout: Option<(i64, Option<serde_json::Value>)> = sql!(
            &mut tx,
            query_as((
                "SELECT reservation_id, request_body FROM checkout WHERE idempotency_key = $1 FOR UPDATE",
                "SELECT reservation_id, request_body FROM checkout WHERE idempotency_key = $1"
            ))
            .bind(key)
            .fetch_optional()
        )?;
        let Some((reservation_id, first_body)) = checkout else {
            return Err(BookingError::NotFound { what: "checkout", id: key.to_string() });
        };
        match first_body {
            Some(first) if first != body => return Err(BookingError::KeyReused { key }),
            Some(_) => {
                tx.commit().await?;
                return match self.creation {
                    PaymentCreation::UseCase => self.await_outcome(key).await,
                    PaymentCreation::Event => crate::payment_event::answer(&self.pool, key).await,
                };
            }
            None => {}
        }
        if reservation_id != req.reservation_id {
            return Err(BookingError::KeyReused { key });
        }
        sql!(
            &mut tx,
            query("UPDATE checkout SET request_body = $2 WHERE idempotency_key = $1").bind(key).bind(&body).execute()
        )?;
        let r: Option<(String, i64, i64)> = sql!(
            &mut tx,
            query_as((
                "SELECT r.status, r.user_id, s.price \
                 FROM reservation r JOIN seat s ON s.id = r.seat_id WHERE r.id = $1 FOR UPDATE OF r",
                "SELECT r.status, r.user_id, s.price FROM reservation r JOIN seat s ON s.id = r.seat_id WHERE r.id = $1"
            ))
            .bind(req.reservation_id)
            .fetch_optional()
        )?;
        let Some((status, owner, amount)) = r else {
            return Err(BookingError::NotFound { what: "reservation", id: req.reservation_id.to_string() });
        };
        let already_paid: bool = sql!(
            &mut tx,
            query_scalar("SELECT EXISTS (SELECT 1 FROM payment WHERE reservation_id = $1)")
                .bind(req.reservation_id)
                .fetch_one()
        )?;
        if status != "PENDING" || owner != req.user_id || already_paid {
            let status = if owner != req.user_id {
                "another user's".to_owned()
            } else if already_paid {
                "paid".to_owned()
            } else {
                status
            };
            return Err(BookingError::NotPayable { reservation_id: req.reservation_id, status });
        }
        let charged = sql!(
            &mut tx,
            query("UPDATE app_user SET balance = balance - $2 WHERE id = $1 AND balance >= $2")
                .bind(owner)
                .bind(amount)
                .execute()
        )? == 1;
        if self.creation == PaymentCreation::Event {
            let request = crate::payment_event::Accepted {
                key,
                reservation_id: req.reservation_id,
                user_id: owner,
                amount,
                charged,
            };
            let after = crate::payment_event::accept(&self.outbox, tx.ex(), &request).await?;
            tx.commit().await?;
            if let Some(after) = after {
                if let Err(e) = after.run(&self.store).await {
                    tracing::warn!(%key, error = %reliable_kafka::report(&e), "releasing hold and token failed");
                }
            }
            return crate::payment_event::answer(&self.pool, key).await;
        }
        let payment_id = insert_payment(
            tx.ex(),
            NewPayment { reservation_id: req.reservation_id, user_id: owner, amount, charged, key },
        )
        .await?;
        if !charged {
            let failure = Failure { reason: INSUFFICIENT_BALANCE, charged: false };
            finalize_failed(&self.outbox, tx.ex(), payment_id, failure).await?;
            tx.commit().await?;
            return self.payment(payment_id).await;
        }
        tx.commit().await?;

        match self.gateway.charge(payment_id, amount).await {
            Ok(status) => {
                let outcome = if status == ChargeStatus::Approved { Outcome::Approved } else { Outcome::Declined };
                let mut tx = self.pool.begin().await?;
                let after = finalize(tx.ex(), &self.outbox, payment_id, outcome, "gateway answered").await?;
                tx.commit().await?;
                if let Some(Some(after)) = after {
                    // The outcome is committed; holds and tokens also expire on their own.
                    if let Err(e) = after.run(&self.store).await {
                        tracing::warn!(payment_id, error = %reliable_kafka::report(&e), "releasing hold and token failed");
                    }
                }
            }
            Err(e @ (GatewayError::Timeout(_) | GatewayError::Unavailable(_))) => {
                tracing::info!(payment_id, error = %reliable_kafka::report(&e), "no answer from the gateway; left to recovery");
            }
            Err(e) => {
                tracing::warn!(payment_id, error = %reliable_kafka::report(&e), "gateway protocol error; left to recovery");
            }
        }
        self.payment(payment_id).await
    }

    /// The payment of `key`, waiting up to `duplicate_wait` while it is in progress.
    async fn await_outcome(&self, key: Uuid) -> Result<PaymentView, BookingError> {
        let deadline = tokio::time::Instant::now() + self.duplicate_wait;
        loop {
            let q = format!("{PAYMENT_VIEW} idempotency_key = $1");
            let p: Option<PaymentView> = sql!(&self.pool, query_as(&q).bind(key).fetch_optional())?;
            match p {
                Some(p) if p.status != "IN_PROGRESS" || tokio::time::Instant::now() >= deadline => return Ok(p),
                None if tokio::time::Instant::now() >= deadline => {
                    return Err(BookingError::NotFound { what: "payment for key", id: key.to_string() })
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

async fn history(mut tx: Ex<'_>, payment_id: i64, status: &str, note: Option<&str>) -> Result<(), sqlx::Error> {
    sql!(
        tx.re(),
        query("INSERT INTO payment_history (payment_id, status, note) VALUES ($1, $2, $3)")
            .bind(payment_id)
            .bind(status)
            .bind(note)
            .execute()
    )
    .map(|_| ())
}

/// A payment record to write, `IN_PROGRESS`.
pub(crate) struct NewPayment {
    pub(crate) reservation_id: i64,
    pub(crate) user_id: i64,
    pub(crate) amount: i64,
    /// Whether the balance was charged (then a `CHARGE` line goes to the point history).
    pub(crate) charged: bool,
    /// The checkout's idempotency key (unique per payment).
    pub(crate) key: Uuid,
}

/// Writes the payment `IN_PROGRESS` with its first history line, and the `CHARGE` line
/// of the point history when the balance was charged; returns the payment id. The
/// payment carries the current trace's `traceparent` (the recovery settles it there).
pub(crate) async fn insert_payment(mut tx: Ex<'_>, p: NewPayment) -> Result<i64, BookingError> {
    let insert_payment = format!(
        "INSERT INTO payment (reservation_id, user_id, amount, status, charged, idempotency_key, updated_at, traceparent) \
         VALUES ($1, $2, $3, 'IN_PROGRESS', $4, $5, {NOW_LITE}, $6) RETURNING id"
    );
    let payment_id: i64 = sql!(
        tx.re(),
        query_scalar((
            "INSERT INTO payment (reservation_id, user_id, amount, status, charged, idempotency_key, updated_at, traceparent) \
             VALUES ($1, $2, $3, 'IN_PROGRESS', $4, $5, clock_timestamp(), $6) RETURNING id",
            insert_payment.as_str()
        ))
        .bind(p.reservation_id)
        .bind(p.user_id)
        .bind(p.amount)
        .bind(p.charged)
        .bind(p.key)
        .bind(request_traceparent())
        .fetch_one()
    )?;
    history(tx.re(), payment_id, "IN_PROGRESS", None).await?;
    if p.charged {
        sql!(
            tx.re(),
            query("INSERT INTO point_history (user_id, payment_id, kind, amount) VALUES ($1, $2, 'CHARGE', $3)")
                .bind(p.user_id)
                .bind(payment_id)
                .bind(-p.amount)
                .execute()
        )?;
    }
    Ok(payment_id)
}

/// Why a payment without enough points failed.
pub(crate) const INSUFFICIENT_BALANCE: &str = "insufficient balance";

struct Failure {
    reason: &'static str,
    charged: bool,
}

/// Fails an `IN_PROGRESS` payment whose balance was not charged (insufficient
/// balance) and enqueues `payment.failed`, which releases the seat.
pub(crate) async fn fail_uncharged(outbox: &Outbox, tx: Ex<'_>, payment_id: i64) -> Result<bool, BookingError> {
    finalize_failed(outbox, tx, payment_id, Failure { reason: INSUFFICIENT_BALANCE, charged: false }).await
}

/// Marks an `IN_PROGRESS` payment `FAILED` and enqueues `payment.failed`.
async fn finalize_failed(outbox: &Outbox, mut tx: Ex<'_>, payment_id: i64, f: Failure) -> Result<bool, BookingError> {
    // SQLite's RETURNING cannot name the FROM table: the reservation is read after.
    let lite = format!(
        "UPDATE payment SET status = 'FAILED', failure_reason = $2, updated_at = {NOW_LITE} \
         WHERE id = $1 AND status = 'IN_PROGRESS' RETURNING reservation_id, user_id, 0, 0, amount, NULL"
    );
    let row: Option<(i64, i64, i64, i64, i64, Option<String>)> = if tx.is_mysql() {
        // MySQL has no `UPDATE … RETURNING`: the row, locked by the update, is read after.
        let failed = sql!(
            tx.re(),
            query("UPDATE payment SET status = 'FAILED', failure_reason = $2, updated_at = now() WHERE id = $1 AND status = 'IN_PROGRESS'")
                .bind(payment_id)
                .bind(f.reason)
                .execute()
        )? == 1;
        if !failed {
            return Ok(false);
        }
        sql!(
            tx.re(),
            query_as("SELECT reservation_id, user_id, 0, 0, amount, NULL FROM payment WHERE id = $1")
                .bind(payment_id)
                .fetch_optional()
        )?
    } else {
        sql!(
            tx.re(),
            query_as((
                "UPDATE payment p SET status = 'FAILED', failure_reason = $2, updated_at = now() \
                 FROM reservation r WHERE p.id = $1 AND p.status = 'IN_PROGRESS' AND r.id = p.reservation_id \
                 RETURNING p.reservation_id, p.user_id, r.seat_id, r.concert_date_id, p.amount, r.queue_token",
                lite.as_str()
            ))
            .bind(payment_id)
            .bind(f.reason)
            .fetch_optional()
        )?
    };
    let Some((reservation_id, user_id, _, _, amount, _)) = row else {
        return Ok(false);
    };
    let (seat_id, concert_date_id, queue_token): (i64, i64, Option<String>) = sql!(
        tx.re(),
        query_as("SELECT seat_id, concert_date_id, queue_token FROM reservation WHERE id = $1")
            .bind(reservation_id)
            .fetch_one()
    )?;
    history(tx.re(), payment_id, "FAILED", Some(f.reason)).await?;
    let event = PaymentFailed {
        payment_id,
        reservation_id,
        user_id,
        seat_id,
        concert_date_id,
        amount,
        charged: f.charged,
        queue_token: queue_token.unwrap_or_default(),
        reason: f.reason.to_owned(),
    };
    tx.enqueue(outbox, &event).await?;
    Ok(true)
}

/// What to do in Redis once a finalizing transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "release the hold and token after the commit"]
pub struct AfterCommit {
    seat_id: i64,
    user_id: i64,
    token: Option<String>,
}

impl AfterCommit {
    /// The clean-up of `user_id`'s hold on `seat_id` and of their queue `token`.
    pub(crate) fn new(seat_id: i64, user_id: i64, token: Option<String>) -> Self {
        AfterCommit { seat_id, user_id, token }
    }

    /// Releases the seat hold and expires the queue token: in-process, after the
    /// commit (seed 002). Both are compare-and-delete, so repeating is harmless.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn run(self, store: &Store) -> Result<(), BookingError> {
        store.release_hold(self.seat_id, self.user_id).await?;
        store.expire_token(self.user_id, self.token.as_deref().unwrap_or_default()).await?;
        Ok(())
    }
}

/// Writes a payment's outcome in `tx`, if it is still `IN_PROGRESS` (so the request
/// path and the recovery scheduler can race safely): approved → payment `COMPLETED`,
/// reservation `CONFIRMED`, seat `SOLD`, `payment.completed` and `OrderPlaced`
/// enqueued; declined → payment `FAILED` and `payment.failed` enqueued (the charge is
/// refunded by the compensator).
///
/// Returns `None` when the payment was no longer in progress, else `Some` with the
/// Redis clean-up to run after commit (nothing to do for a failure: the
/// `post-payment-cleanup-group` does it).
///
/// # Errors
/// Database and outbox errors.
pub async fn finalize(
    mut tx: Ex<'_>,
    outbox: &Outbox,
    payment_id: i64,
    outcome: Outcome,
    note: &str,
) -> Result<Option<Option<AfterCommit>>, BookingError> {
    match outcome {
        Outcome::Declined => {
            let failure = Failure { reason: "declined by the payment gateway", charged: true };
            Ok(finalize_failed(outbox, tx, payment_id, failure).await?.then_some(None))
        }
        Outcome::Approved => {
            let lite = format!(
                "UPDATE payment SET status = 'COMPLETED', updated_at = {NOW_LITE} \
                 WHERE id = $1 AND status = 'IN_PROGRESS' RETURNING reservation_id, user_id, amount"
            );
            let row: Option<(i64, i64, i64)> = if tx.is_mysql() {
                // MySQL has no `UPDATE … RETURNING`: the row, locked by the update, is read after.
                let completed = sql!(
                    tx.re(),
                    query("UPDATE payment SET status = 'COMPLETED', updated_at = now() WHERE id = $1 AND status = 'IN_PROGRESS'")
                        .bind(payment_id)
                        .execute()
                )? == 1;
                if !completed {
                    return Ok(None);
                }
                sql!(
                    tx.re(),
                    query_as("SELECT reservation_id, user_id, amount FROM payment WHERE id = $1")
                        .bind(payment_id)
                        .fetch_optional()
                )?
            } else {
                sql!(
                    tx.re(),
                    query_as((
                        "UPDATE payment SET status = 'COMPLETED', updated_at = now() \
                         WHERE id = $1 AND status = 'IN_PROGRESS' RETURNING reservation_id, user_id, amount",
                        lite.as_str()
                    ))
                    .bind(payment_id)
                    .fetch_optional()
                )?
            };
            let Some((reservation_id, user_id, amount)) = row else {
                return Ok(None);
            };
            let (seat_id, token, concert_title, starts_at, mail): (
                i64,
                Option<String>,
                String,
                chrono::DateTime<chrono::Utc>,
                Option<String>,
            ) = sql!(
                tx.re(),
                query_as(
                    "SELECT r.seat_id, r.queue_token, c.title, d.starts_at, u.mail FROM reservation r \
                     JOIN concert_date d ON d.id = r.concert_date_id JOIN concert c ON c.id = d.concert_id \
                     JOIN app_user u ON u.id = r.user_id WHERE r.id = $1"
                )
                .bind(reservation_id)
                .fetch_one()
            )?;
            history(tx.re(), payment_id, "COMPLETED", Some(note)).await?;
            let confirm = format!("UPDATE reservation SET status = 'CONFIRMED', updated_at = {NOW_LITE} WHERE id = $1");
            sql!(
                tx.re(),
                query((
                    "UPDATE reservation SET status = 'CONFIRMED', updated_at = now() WHERE id = $1",
                    confirm.as_str()
                ))
                .bind(reservation_id)
                .execute()
            )?;
            sql!(tx.re(), query("UPDATE seat SET status = 'SOLD' WHERE id = $1").bind(seat_id).execute())?;
            let completed = PaymentCompleted {
                payment_id,
                reservation_id,
                user_id,
                amount,
                mail,
                concert_title,
                starts_at,
                confirmed_at: chrono::Utc::now(),
            };
            tx.enqueue(outbox, &completed).await?;
            tx.enqueue(outbox, &OrderPlaced { payment_id, reservation_id, user_id, seat_id, amount }).await?;
            Ok(Some(Some(AfterCommit { seat_id, user_id, token })))
        }
    }
}

/// The current request's W3C `traceparent` (none without an OpenTelemetry layer).
fn request_traceparent() -> Option<String> {
    reliable_kafka::telemetry::current_trace_headers()
        .into_iter()
        .find(|(k, _)| *k == reliable_kafka::headers::TRACEPARENT)
        .map(|(_, v)| v)
}
