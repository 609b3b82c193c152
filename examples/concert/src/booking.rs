//! Booking and payment: the writes of the application, each in one transaction.

use reliable_kafka::Outbox;
use sqlx::PgPool;

use crate::events::PaymentFailed;
use crate::store::RedisStore;

/// Errors of booking and payment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BookingError {
    /// Someone else holds or reserved the seat.
    #[error("seat {seat_id} is not available")]
    SeatTaken {
        /// The seat.
        seat_id: i64,
    },
    /// The reservation is not waiting for payment.
    #[error("reservation {reservation_id} is not pending")]
    NotPending {
        /// The reservation.
        reservation_id: i64,
    },
    /// PostgreSQL failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Redis failed.
    #[error("redis error")]
    Redis(#[from] redis::RedisError),
    /// Writing the outbox failed.
    #[error("outbox error")]
    Outbox(#[from] reliable_kafka::Error),
}

/// A seat reserved and waiting for payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Reservation id.
    pub id: i64,
    /// User.
    pub user_id: i64,
    /// Seat.
    pub seat_id: i64,
    /// Concert date.
    pub concert_date_id: i64,
    /// Seat price in points.
    pub amount: i64,
    /// The user's queue token.
    pub queue_token: String,
}

/// What the payment gateway does with a payment (the scenario injects failures here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayBehaviour {
    /// Approves.
    Approve,
    /// Declines before anything is charged.
    DeclineBeforeCharge,
    /// Fails after the balance was charged (confirmation lost): needs a refund.
    FailAfterCharge,
}

/// Result of a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// Paid: reservation confirmed, seat sold.
    Completed {
        /// Payment id.
        payment_id: i64,
    },
    /// Failed: `payment.failed` is in the outbox; compensation is on its way.
    Failed {
        /// Payment id.
        payment_id: i64,
        /// Whether the balance was charged.
        charged: bool,
    },
}

/// The booking service.
#[derive(Debug, Clone)]
pub struct Booking {
    pool: PgPool,
    store: RedisStore,
    outbox: Outbox,
}

impl Booking {
    /// A service on `pool` and `store`.
    pub fn new(pool: PgPool, store: RedisStore) -> Self {
        Booking {
            pool,
            store,
            outbox: Outbox::new(),
        }
    }

    /// Issues the user's waiting-queue token.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn enter_queue(&self, user_id: i64) -> Result<String, BookingError> {
        Ok(self.store.issue_token(user_id).await?)
    }

    /// Holds the seat in Redis (`SET NX` with TTL) and reserves it in the database:
    /// seat `AVAILABLE → RESERVED`, the date's `available_seat_count - 1`, a `PENDING`
    /// reservation.
    ///
    /// # Errors
    /// [`BookingError::SeatTaken`] when the seat is held or not available.
    pub async fn reserve(
        &self,
        user_id: i64,
        seat_id: i64,
        queue_token: String,
    ) -> Result<Reservation, BookingError> {
        if !self.store.hold_seat(seat_id, user_id).await? {
            return Err(BookingError::SeatTaken { seat_id });
        }
        let result = async {
            let mut tx = self.pool.begin().await?;
            let seat: Option<(i64, i64)> =
                sqlx::query_as("UPDATE seat SET status = 'RESERVED' WHERE id = $1 AND status = 'AVAILABLE' RETURNING concert_date_id, price")
                    .bind(seat_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some((concert_date_id, amount)) = seat else {
                return Err(BookingError::SeatTaken { seat_id });
            };
            sqlx::query("UPDATE concert_date SET available_seat_count = available_seat_count - 1 WHERE id = $1")
                .bind(concert_date_id)
                .execute(&mut *tx)
                .await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO reservation (user_id, seat_id, concert_date_id, status) VALUES ($1, $2, $3, 'PENDING') RETURNING id",
            )
            .bind(user_id)
            .bind(seat_id)
            .bind(concert_date_id)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Reservation { id, user_id, seat_id, concert_date_id, amount, queue_token: queue_token.clone() })
        }
        .await;
        if result.is_err() {
            let _ = self.store.release_hold(seat_id, user_id).await;
        }
        result
    }

    /// Pays a reservation in one transaction. On success: balance charged, payment
    /// `COMPLETED`, reservation `CONFIRMED`, seat `SOLD`; then the hold and token are
    /// released in-process (seed 002). On failure: payment `FAILED` and `payment.failed`
    /// enqueued in the same transaction, and the call returns at once; the consumers
    /// compensate (seed 000).
    ///
    /// # Errors
    /// [`BookingError::NotPending`] when the reservation was paid or failed already.
    pub async fn pay(
        &self,
        r: &Reservation,
        gateway: GatewayBehaviour,
    ) -> Result<PaymentOutcome, BookingError> {
        let mut tx = self.pool.begin().await?;
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM reservation WHERE id = $1 FOR UPDATE")
                .bind(r.id)
                .fetch_optional(&mut *tx)
                .await?;
        if status.as_deref() != Some("PENDING") {
            return Err(BookingError::NotPending {
                reservation_id: r.id,
            });
        }
        let mut charged = false;
        let mut failure = match gateway {
            GatewayBehaviour::DeclineBeforeCharge => Some("card declined"),
            GatewayBehaviour::Approve | GatewayBehaviour::FailAfterCharge => None,
        };
        if failure.is_none() {
            let debited = sqlx::query(
                "UPDATE app_user SET balance = balance - $2 WHERE id = $1 AND balance >= $2",
            )
            .bind(r.user_id)
            .bind(r.amount)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if debited == 1 {
                charged = true;
                if gateway == GatewayBehaviour::FailAfterCharge {
                    failure = Some("gateway confirmation failed after charge");
                }
            } else {
                failure = Some("insufficient balance");
            }
        }
        let status = if failure.is_some() {
            "FAILED"
        } else {
            "COMPLETED"
        };
        let payment_id: i64 = sqlx::query_scalar(
            "INSERT INTO payment (reservation_id, user_id, amount, status, charged, failure_reason) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(r.id)
        .bind(r.user_id)
        .bind(r.amount)
        .bind(status)
        .bind(charged)
        .bind(failure)
        .fetch_one(&mut *tx)
        .await?;
        if charged {
            sqlx::query("INSERT INTO point_history (user_id, payment_id, kind, amount) VALUES ($1, $2, 'CHARGE', $3)")
                .bind(r.user_id)
                .bind(payment_id)
                .bind(-r.amount)
                .execute(&mut *tx)
                .await?;
        }
        match failure {
            None => {
                sqlx::query(
                    "UPDATE reservation SET status = 'CONFIRMED', updated_at = now() WHERE id = $1",
                )
                .bind(r.id)
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE seat SET status = 'SOLD' WHERE id = $1")
                    .bind(r.seat_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                // Token expiry stays in-process (seed 002): Redis, not Kafka.
                self.store.release_hold(r.seat_id, r.user_id).await?;
                self.store.expire_token(r.user_id, &r.queue_token).await?;
                Ok(PaymentOutcome::Completed { payment_id })
            }
            Some(reason) => {
                let event = PaymentFailed {
                    payment_id,
                    reservation_id: r.id,
                    user_id: r.user_id,
                    seat_id: r.seat_id,
                    concert_date_id: r.concert_date_id,
                    amount: r.amount,
                    charged,
                    queue_token: r.queue_token.clone(),
                    reason: reason.to_owned(),
                };
                self.outbox.enqueue(&mut tx, &event).await?;
                tx.commit().await?;
                Ok(PaymentOutcome::Failed {
                    payment_id,
                    charged,
                })
            }
        }
    }
}
