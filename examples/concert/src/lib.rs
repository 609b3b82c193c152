//! The concert reference application of `reliable-kafka`: the five seed documents
//! (`../shared/seeds/`) as one service.
//!
//! | flow | seed | module |
//! |---|---|---|
//! | queue token, seat hold (Redis) and reservation | 000 | [`booking`], [`store`] |
//! | checkout with an idempotency key | 004 | [`booking::Booking::pay`] |
//! | payment, outbox `payment.completed` / `OrderPlaced` | 002, 004 | [`booking::finalize`] |
//! | payment created by an event consumer (`PAYMENT_CREATION=event`) | 002 | [`payment_event`] |
//! | payment-failure compensation (two groups) | 000 | [`handlers`] |
//! | notification webhook, DLQ, bounded re-drive | 003 | [`webhook`], [`app`] |
//! | order trace (two groups) and coupons | 001 | [`handlers`], [`coupon`] |
//! | payment recovery in a bulkhead | 004 | [`recovery`], [`gateway`] |
//!
//! [`scenario`] drives many users through these flows and checks every invariant;
//! [`services`] picks the real services or their embedded stand-ins. The
//! fault-injection harness that runs the flows while processes, the broker,
//! PostgreSQL and Redis fail at the worst moments is the crate `concert-chaos`
//! (`examples/concert-chaos`), the only one that enables the library's `testing`
//! feature.
//!
//! Everything uses only the public API of `reliable-kafka`.

pub mod alert;
pub mod api;
pub mod app;
pub mod booking;
pub mod config;
pub mod coupon;
pub mod db;
pub mod events;
pub mod gateway;
pub mod handlers;
pub mod http;
pub mod ops_page;
pub mod payment_event;
pub mod recovery;
pub mod scenario;
pub mod services;
pub mod store;
pub mod telemetry;
pub mod webhook;

use sqlx::migrate::Migrator;

use crate::db::Db;

static PG_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static MYSQL_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/mysql");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Creates the library's tables (outbox, dedup, parked) and the application's.
///
/// # Errors
/// When a migration fails.
pub async fn migrate(db: &Db) -> anyhow::Result<()> {
    let app = |m: &'static Migrator| {
        let mut app = Migrator { migrations: std::borrow::Cow::Borrowed(&m.migrations), ..Migrator::DEFAULT };
        // The library's migrations share `_sqlx_migrations`.
        app.set_ignore_missing(true);
        app
    };
    match db {
        Db::Postgres(pool) => {
            reliable_kafka::migrate(pool).await?;
            app(&PG_MIGRATIONS).run(pool).await?;
        }
        Db::MySql(pool) => {
            reliable_kafka::migrate(pool).await?;
            app(&MYSQL_MIGRATIONS).run(pool).await?;
        }
        Db::Sqlite(pool) => {
            reliable_kafka::migrate(pool).await?;
            app(&SQLITE_MIGRATIONS).run(pool).await?;
        }
    }
    Ok(())
}
