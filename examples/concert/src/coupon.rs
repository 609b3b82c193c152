//! Coupon issuance (seed 001): the stock is decremented under a per-coupon row lock in
//! one transaction that also records the request and enqueues the issue event, so the
//! event exists if and only if the stock was taken; the consumer creates the coupon.

use reliable_kafka::Outbox;

use crate::booking::BookingError;
use crate::db::Db;
use crate::events::CouponIssueRequested;
use crate::sql;

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

impl From<reliable_kafka::Error> for CouponError {
    fn from(e: reliable_kafka::Error) -> Self {
        CouponError::Booking(e.into())
    }
}

/// Requests coupon `coupon_id` for `user_id`; the coupon itself is created by the
/// `coupon-issue-group` consumer.
///
/// # Errors
/// [`CouponError::SoldOut`], [`CouponError::AlreadyRequested`], [`CouponError::NotFound`].
pub async fn request_coupon(pool: &Db, outbox: &Outbox, coupon_id: i64, user_id: i64) -> Result<(), CouponError> {
    let mut tx = pool.begin().await?;
    // The row lock (SQLite: the write lock of BEGIN IMMEDIATE) serializes requests.
    let remaining: Option<i32> = sql!(
        &mut tx,
        query_scalar((
            "SELECT remaining FROM coupon_stock WHERE id = $1 FOR UPDATE",
            "SELECT remaining FROM coupon_stock WHERE id = $1"
        ))
        .bind(coupon_id)
        .fetch_optional()
    )?;
    let Some(remaining) = remaining else {
        return Err(CouponError::NotFound { what: "coupon", id: coupon_id });
    };
    let user: bool =
        sql!(&mut tx, query_scalar("SELECT EXISTS (SELECT 1 FROM app_user WHERE id = $1)").bind(user_id).fetch_one())?;
    if !user {
        return Err(CouponError::NotFound { what: "user", id: user_id });
    }
    let first = sql!(
        &mut tx,
        query("INSERT INTO coupon_request (coupon_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(coupon_id)
            .bind(user_id)
            .execute()
    )? == 1;
    if !first {
        return Err(CouponError::AlreadyRequested { coupon_id, user_id });
    }
    if remaining == 0 {
        return Err(CouponError::SoldOut { coupon_id });
    }
    sql!(&mut tx, query("UPDATE coupon_stock SET remaining = remaining - 1 WHERE id = $1").bind(coupon_id).execute())?;
    tx.ex().enqueue(outbox, &CouponIssueRequested { coupon_id, user_id }).await.map_err(BookingError::from)?;
    tx.commit().await?;
    Ok(())
}
