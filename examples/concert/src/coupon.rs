//! Coupon issuance (seed 001): the stock is decremented under a per-coupon row lock in
//! one transaction that also records the request and enqueues the issue event, so the
//! event exists if and only if the stock was taken; the consumer creates the coupon.

use reliable_kafka::Outbox;
use sqlx::PgPool;

use crate::booking::BookingError;
use crate::events::CouponIssueRequested;

/// Why a coupon request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CouponError {
    /// No coupon left.
    #[error("coupon {coupon_id} is sold out")]
    SoldOut {
        /// Coupon kind.
        coupon_id: i64,
    },
    /// The user asked before.
    #[error("user {user_id} already requested coupon {coupon_id}")]
    AlreadyRequested {
        /// Coupon kind.
        coupon_id: i64,
        /// User.
        user_id: i64,
    },
    /// Unknown coupon or user.
    #[error("{what} {id} does not exist")]
    NotFound {
        /// Kind of thing.
        what: &'static str,
        /// Its id.
        id: i64,
    },
    /// Database or outbox failure.
    #[error("coupon request failed")]
    Booking(#[from] BookingError),
}

impl From<sqlx::Error> for CouponError {
    fn from(e: sqlx::Error) -> Self {
        CouponError::Booking(e.into())
    }
}

/// Requests coupon `coupon_id` for `user_id`; the coupon itself is created by the
/// `coupon-issue-group` consumer.
///
/// # Errors
/// [`CouponError::SoldOut`], [`CouponError::AlreadyRequested`], [`CouponError::NotFound`].
pub async fn request_coupon(pool: &PgPool, outbox: &Outbox, coupon_id: i64, user_id: i64) -> Result<(), CouponError> {
    let mut tx = pool.begin().await?;
    let remaining: Option<i32> = sqlx::query_scalar("SELECT remaining FROM coupon_stock WHERE id = $1 FOR UPDATE")
        .bind(coupon_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(remaining) = remaining else {
        return Err(CouponError::NotFound { what: "coupon", id: coupon_id });
    };
    let user: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM app_user WHERE id = $1)")
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
    if !user {
        return Err(CouponError::NotFound { what: "user", id: user_id });
    }
    let first = sqlx::query("INSERT INTO coupon_request (coupon_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(coupon_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if !first {
        return Err(CouponError::AlreadyRequested { coupon_id, user_id });
    }
    if remaining == 0 {
        return Err(CouponError::SoldOut { coupon_id });
    }
    sqlx::query("UPDATE coupon_stock SET remaining = remaining - 1 WHERE id = $1")
        .bind(coupon_id)
        .execute(&mut *tx)
        .await?;
    outbox.enqueue(&mut tx, &CouponIssueRequested { coupon_id, user_id }).await.map_err(BookingError::from)?;
    tx.commit().await?;
    Ok(())
}
