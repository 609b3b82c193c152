//! The crate's PostgreSQL schema: `rk_outbox` and `rk_processed_messages`.

use std::borrow::Cow;

use sqlx::migrate::Migrator;
use sqlx::PgPool;

use crate::Error;

/// Default outbox table.
pub const DEFAULT_OUTBOX_TABLE: &str = "rk_outbox";
/// Default deduplication table of the idempotent consumer.
pub const DEFAULT_PROCESSED_TABLE: &str = "rk_processed_messages";
/// Channel the outbox trigger notifies on commit.
pub const NOTIFY_CHANNEL: &str = "rk_outbox";

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The crate's migrations (sqlx format, versions `20260101000001`…), for embedding in
/// your own migration tooling. Their SQL files are in the crate's `migrations/` folder.
pub fn migrator() -> Migrator {
    Migrator {
        migrations: Cow::Borrowed(&MIGRATIONS.migrations),
        // Applications keep their own migrations in the same `_sqlx_migrations` table.
        ignore_missing: true,
        ..Migrator::DEFAULT
    }
}

/// Creates or upgrades the outbox and deduplication tables in the pool's current
/// schema (`search_path`). Idempotent; safe to call from several instances at once
/// (sqlx takes an advisory lock).
///
/// Your own `sqlx::migrate!()` migrator shares the `_sqlx_migrations` table, so call
/// `.set_ignore_missing(true)` on it.
///
/// # Errors
/// [`Error::Migrate`] when a migration fails or was changed after being applied.
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    migrator().run(pool).await.map_err(Error::Migrate)
}
