//! The crate's tables: `rk_outbox`, `rk_processed_messages` and `rk_parked_messages`,
//! for PostgreSQL (`migrations/postgres`) and SQLite (`migrations/sqlite`).

use std::borrow::Cow;

use sqlx::migrate::Migrator;
use sqlx::Pool;

use crate::{Backend, Error};

/// Default outbox table.
pub const DEFAULT_OUTBOX_TABLE: &str = "rk_outbox";
/// Default deduplication table of the idempotent consumer.
pub const DEFAULT_PROCESSED_TABLE: &str = "rk_processed_messages";
/// Default table of parked dead-letter records.
pub const DEFAULT_PARKED_TABLE: &str = "rk_parked_messages";
/// Channel the PostgreSQL outbox trigger notifies on commit.
pub const NOTIFY_CHANNEL: &str = "rk_outbox";

/// The crate's migrations for backend `DB` (sqlx format, versions `20260101000001`…),
/// for embedding in your own migration tooling. Their SQL files are in the crate's
/// `migrations/postgres` and `migrations/sqlite` folders.
pub fn migrator<DB: Backend>() -> Migrator {
    Migrator {
        migrations: Cow::Borrowed(&DB::migrations().migrations),
        // Applications keep their own migrations in the same `_sqlx_migrations` table.
        ignore_missing: true,
        ..Migrator::DEFAULT
    }
}

/// Creates or upgrades the outbox, deduplication and parked-record tables in the
/// pool's database (PostgreSQL: its current schema, `search_path`). Idempotent; safe to
/// call from several instances at once (sqlx takes a lock).
///
/// Your own `sqlx::migrate!()` migrator shares the `_sqlx_migrations` table, so call
/// `.set_ignore_missing(true)` on it.
///
/// # Errors
/// [`Error::Migrate`] when a migration fails or was changed after being applied.
pub async fn migrate<DB: Backend>(pool: &Pool<DB>) -> Result<(), Error> {
    let migrator = migrator::<DB>();
    DB::run_migrator(&migrator, pool).await.map_err(Error::Migrate)
}
