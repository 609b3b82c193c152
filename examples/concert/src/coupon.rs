//! Coupon issuance (seed 001): under a per-coupon distributed lock in Redis (`SET NX
//! PX` with a token, compare-and-delete release), one transaction records the request,
//! takes one from the stock and enqueues the issue event, so the event exists if and
//! only if the stock was taken; the consumer creates the coupon. The database fences
//! what the lock cannot promise once it lapses: the unique `(coupon_id, user_id)` of
//! the request and the decrement's `remaining > 0` condition.

use std::time::Duration;

use reliable_kafka::Outbox;

use crate::booking::BookingError;
use crate::db::Db;
use crate::events::CouponIssueRequested;
use crate::sql;
use crate::store::{Store, StoreError};

/// How long a coupon lock lives if its holder dies (ms precision).
pub const COUPON_LOCK_TTL: Duration = Duration::from_secs(5);
/// How long a request waits for the coupon lock before it is refused as busy.
pub const COUPON_LOCK_WAIT: Duration = Duration::from_secs(5);

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
    /// The coupon's lock stayed taken for [`COUPON_LOCK_WAIT`]; retry later.
    #[error("coupon {coupon_id} is busy; retry later")]
    Busy {
        /// Coupon kind.
        coupon_id: i64,
    },
    /// The lock's store (Redis) failed.
    #[error("coupon lock")]
    Lock(#[from] StoreError),
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

/// Requests coupon `coupon_id` for `user_id` under the coupon's lock in `store`; the
/// coupon itself is created by the `coupon-issue-group` consumer.
///
/// # Errors
/// [`CouponError::SoldOut`], [`CouponError::AlreadyRequested`], [`CouponError::NotFound`],
/// [`CouponError::Busy`] when the lock stays taken, [`CouponError::Lock`] when Redis
/// fails, [`CouponError::Booking`] when the database does.
pub async fn request_coupon(
    pool: &Db,
    store: &Store,
    outbox: &Outbox,
    coupon_id: i64,
    user_id: i64,
) -> Result<(), CouponError> {
    let lock = store
        .lock(&format!("coupon:{coupon_id}"), COUPON_LOCK_TTL, COUPON_LOCK_WAIT)
        .await?
        .ok_or(CouponError::Busy { coupon_id })?;
    let result = take_one(pool, outbox, coupon_id, user_id).await;
    match store.unlock(lock).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(coupon_id, "coupon lock lapsed before release; the database fenced the request"),
        Err(e) => tracing::warn!(coupon_id, error = %reliable_kafka::report(&e), "coupon lock not released; it lapses"),
    }
    result
}

async fn take_one(pool: &Db, outbox: &Outbox, coupon_id: i64, user_id: i64) -> Result<(), CouponError> {
    let mut tx = pool.begin().await?;
    let remaining: Option<i32> = sql!(
        &mut tx,
        query_scalar("SELECT remaining FROM coupon_stock WHERE id = $1").bind(coupon_id).fetch_optional()
    )?;
    if remaining.is_none() {
        return Err(CouponError::NotFound { what: "coupon", id: coupon_id });
    }
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
    let taken = sql!(
        &mut tx,
        query("UPDATE coupon_stock SET remaining = remaining - 1 WHERE id = $1 AND remaining > 0")
            .bind(coupon_id)
            .execute()
    )? == 1;
    if !taken {
        return Err(CouponError::SoldOut { coupon_id });
    }
    tx.ex().enqueue(outbox, &CouponIssueRequested { coupon_id, user_id }).await.map_err(BookingError::from)?;
    tx.commit().await?;
    Ok(())
}
