//! The deduplication table of the idempotent consumer.

use std::collections::HashSet;
use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::Pool;
use uuid::Uuid;

/// The deduplication table of a backend.
pub trait DedupStore: sqlx::Database + Sized {
    /// The statements for one deduplication table.
    type DedupSql: std::fmt::Debug + Send + Sync + 'static;

    /// The statements for `table`.
    fn dedup_sql(table: &str) -> Self::DedupSql;

    /// Inserts the deduplication row; `false` when the message id was processed before.
    fn insert_dedup<'a>(
        conn: &'a mut Self::Connection,
        sql: &'a Self::DedupSql,
        group: &'a str,
        message_id: Uuid,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + 'a;

    /// Inserts the deduplication rows of `message_ids`; returns those inserted (not
    /// processed before). By default one [`DedupStore::insert_dedup`] per id (SQLite:
    /// in process, as fast as a multi-row statement; MySQL: `INSERT IGNORE` reports how
    /// many rows it inserted, not which); PostgreSQL inserts them in one statement.
    fn insert_dedup_batch<'a>(
        conn: &'a mut Self::Connection,
        sql: &'a Self::DedupSql,
        group: &'a str,
        message_ids: &'a [Uuid],
    ) -> impl Future<Output = Result<HashSet<Uuid>, sqlx::Error>> + Send + 'a {
        async move {
            let mut new = HashSet::with_capacity(message_ids.len());
            for id in message_ids {
                if Self::insert_dedup(&mut *conn, sql, group, *id).await? {
                    new.insert(*id);
                }
            }
            Ok(new)
        }
    }

    /// Deletes up to [`super::sql::DELETE_BATCH`] rows of `group` processed before
    /// `older_than`; the number deleted.
    fn prune_dedup<'a>(
        pool: &'a Pool<Self>,
        sql: &'a Self::DedupSql,
        group: &'a str,
        older_than: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;
}
