//! The concert reference application of `reliable-kafka`.
//!
//! Booking (queue token, seat hold, reservation) and payment write to PostgreSQL and
//! Redis; a failed payment is compensated by choreography (seed document 000): the
//! payment service enqueues `payment.failed` in its own transaction through the
//! transactional outbox and answers at once; two independent consumer groups react:
//!
//! - `payment-compensator-group` ([`handlers::compensate_payment`]) restores the
//!   database: payment and reservation `FAILED`, seat `AVAILABLE`, the date's
//!   `available_seat_count + 1`, and a refund when the user was charged;
//! - `post-payment-cleanup-group` ([`handlers::RedisCleanup`]) deletes the seat hold and
//!   expires the queue token in Redis.
//!
//! A failure in one group never blocks the other: each has its own offsets, retries
//! and dead-letter topic.

pub mod booking;
pub mod config;
pub mod events;
pub mod handlers;
pub mod scenario;
pub mod store;

use sqlx::migrate::Migrator;
use sqlx::PgPool;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Creates the library's tables (outbox, dedup) and the application's.
///
/// # Errors
/// When a migration fails.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    reliable_kafka::migrate(pool).await?;
    let mut app = Migrator {
        migrations: std::borrow::Cow::Borrowed(&MIGRATIONS.migrations),
        ..Migrator::DEFAULT
    };
    // The library's migrations share `_sqlx_migrations`.
    app.set_ignore_missing(true);
    app.run(pool).await?;
    Ok(())
}
