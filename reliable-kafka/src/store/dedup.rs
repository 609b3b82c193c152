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

    /// Whether the backend keeps watermarks (`rk_watermarks`): PostgreSQL.
    const WATERMARKS: bool = false;

    /// Locks (creating at 0 where missing) the watermarks of `sources` (sorted, no
    /// repeats) for `group`, `topic` and `partition` until the transaction ends, and
    /// returns each as (source, highest sequence number applied, in its bootstrap
    /// window). A watermark created while the group has deduplication rows is in its
    /// bootstrap window for `retention`.
    fn lock_watermarks<'a>(
        conn: &'a mut Self::Connection,
        sql: &'a Self::DedupSql,
        retention: std::time::Duration,
        group: &'a str,
        topic: &'a str,
        partition: i32,
        sources: &'a [&'a str],
    ) -> impl Future<Output = Result<Vec<(String, i64, bool)>, sqlx::Error>> + Send + 'a {
        let _ = (conn, sql, retention, group, topic, partition, sources);
        async { Err(sqlx::Error::Configuration("watermark deduplication needs PostgreSQL".into())) }
    }

    /// Sets the watermarks of `sources` to `seqs` (locked before by
    /// [`DedupStore::lock_watermarks`] in the same transaction).
    fn raise_watermarks<'a>(
        conn: &'a mut Self::Connection,
        group: &'a str,
        topic: &'a str,
        partition: i32,
        sources: &'a [String],
        seqs: &'a [i64],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a {
        let _ = (conn, group, topic, partition, sources, seqs);
        async { Err(sqlx::Error::Configuration("watermark deduplication needs PostgreSQL".into())) }
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
