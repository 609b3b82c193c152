//! The key-blocking table (`rk_blocked_records`): records waiting behind a failing
//! record of their key, see `HandlerOptions::key_blocking`.

use std::future::Future;

use sqlx::Pool;

/// A record in `rk_blocked_records`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BlockedRow {
    pub topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub record_key: Vec<u8>,
    pub payload: Option<Vec<u8>>,
    /// The record's headers as JSON text (`redrive::plan::header_json`'s shape).
    pub headers: String,
    pub timestamp_ms: Option<i64>,
    /// The attempt to make next.
    pub attempt: i32,
    pub due_at_ms: i64,
}

const COLUMNS: &str =
    "topic, kafka_partition, kafka_offset, record_key, payload, headers, timestamp_ms, attempt, due_at_ms";

/// Whether a key of a partition has a record waiting: `$1` group, `$2` topic, `$3`
/// partition, `$4` key.
pub(crate) const IS_BLOCKED: &str = "SELECT kafka_offset FROM rk_blocked_records WHERE consumer_group = $1 \
     AND topic = $2 AND kafka_partition = $3 AND record_key = $4 LIMIT 1";

/// Defers a record; nothing when it is there already.
pub(crate) const DEFER: &str = "INSERT INTO rk_blocked_records (consumer_group, topic, kafka_partition, \
     kafka_offset, record_key, payload, headers, timestamp_ms, attempt, due_at_ms, last_error, blocked_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING";

/// The partitions of group `$1` with a record due at `$2` ms.
pub(crate) const DUE_PARTITIONS: &str =
    "SELECT DISTINCT topic, kafka_partition FROM rk_blocked_records WHERE consumer_group = $1 AND due_at_ms <= $2";

/// The heads of the keys (each key's lowest offset) of group `$1`, topic `$2`,
/// partition `$3`, due at `$4` ms, earliest first, at most `$5`.
pub(crate) fn heads() -> String {
    format!(
        "SELECT {COLUMNS} FROM rk_blocked_records r WHERE consumer_group = $1 AND topic = $2 \
         AND kafka_partition = $3 AND due_at_ms <= $4 \
         AND kafka_offset = (SELECT min(h.kafka_offset) FROM rk_blocked_records h WHERE h.consumer_group = r.consumer_group \
         AND h.topic = r.topic AND h.kafka_partition = r.kafka_partition AND h.record_key = r.record_key) \
         ORDER BY due_at_ms, kafka_offset LIMIT $5"
    )
}

/// Sets the next attempt (`$1`), its due time (`$2`) and the error (`$3`) of the record
/// of group `$4`, topic `$5`, partition `$6`, offset `$7`.
pub(crate) const RESCHEDULE: &str = "UPDATE rk_blocked_records SET attempt = $1, due_at_ms = $2, last_error = $3 \
     WHERE consumer_group = $4 AND topic = $5 AND kafka_partition = $6 AND kafka_offset = $7";

/// Removes a record that is done (processed or dead-lettered): its key's next record
/// becomes the head.
pub(crate) const RELEASE: &str = "DELETE FROM rk_blocked_records WHERE consumer_group = $1 AND topic = $2 \
     AND kafka_partition = $3 AND kafka_offset = $4";

/// Records waiting in the table for group `$1`.
pub(crate) const COUNT: &str = "SELECT count(*) FROM rk_blocked_records WHERE consumer_group = $1";

/// A record to defer.
pub struct Defer<'a> {
    pub group: &'a str,
    pub row: &'a BlockedRow,
    pub error: Option<&'a str>,
    pub now_ms: i64,
}

/// The key-blocking table of a backend.
pub trait BlockedStore: sqlx::Database + Sized {
    /// Whether `key` of `topic`/`partition` has a record waiting.
    fn is_blocked<'a>(
        pool: &'a Pool<Self>,
        group: &'a str,
        topic: &'a str,
        partition: i32,
        key: &'a [u8],
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + 'a;

    /// Inserts a record (nothing when it is there already).
    fn defer<'a>(pool: &'a Pool<Self>, d: Defer<'a>) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// The partitions with a record due at `now_ms`.
    fn due_partitions<'a>(
        pool: &'a Pool<Self>,
        group: &'a str,
        now_ms: i64,
    ) -> impl Future<Output = Result<Vec<(String, i32)>, sqlx::Error>> + Send + 'a;

    /// The heads of `topic`/`partition` due at `now_ms`, earliest first.
    fn heads<'a>(
        pool: &'a Pool<Self>,
        group: &'a str,
        partition: (&'a str, i32),
        now_ms: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<BlockedRow>, sqlx::Error>> + Send + 'a;

    /// Sets a record's next attempt and due time.
    fn reschedule<'a>(
        pool: &'a Pool<Self>,
        group: &'a str,
        row: &'a BlockedRow,
        error: &'a str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// Removes a record that is done.
    fn release_blocked<'a>(
        pool: &'a Pool<Self>,
        group: &'a str,
        row: &'a BlockedRow,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// Records waiting for `group`.
    fn blocked_count<'a>(
        pool: &'a Pool<Self>,
        group: &'a str,
    ) -> impl Future<Output = Result<i64, sqlx::Error>> + Send + 'a;
}

/// One implementation for every dialect: the statements (translated by `$sql`) and the
/// column types (`text`, `integer`, `bigint`, `bytea`/`BLOB`) are the same.
macro_rules! impl_blocked_store {
    ($db:ty, $sql:path) => {
        impl BlockedStore for $db {
            async fn is_blocked(
                pool: &Pool<Self>,
                group: &str,
                topic: &str,
                partition: i32,
                key: &[u8],
            ) -> Result<bool, sqlx::Error> {
                let found: Option<i64> = sqlx::query_scalar(&$sql(IS_BLOCKED))
                    .bind(group)
                    .bind(topic)
                    .bind(partition)
                    .bind(key)
                    .fetch_optional(pool)
                    .await?;
                Ok(found.is_some())
            }

            async fn defer(pool: &Pool<Self>, d: Defer<'_>) -> Result<(), sqlx::Error> {
                let r = d.row;
                sqlx::query(&$sql(DEFER))
                    .bind(d.group)
                    .bind(&r.topic)
                    .bind(r.kafka_partition)
                    .bind(r.kafka_offset)
                    .bind(&r.record_key)
                    .bind(&r.payload)
                    .bind(&r.headers)
                    .bind(r.timestamp_ms)
                    .bind(r.attempt)
                    .bind(r.due_at_ms)
                    .bind(d.error)
                    .bind(d.now_ms)
                    .execute(pool)
                    .await
                    .map(|_| ())
            }

            async fn due_partitions(
                pool: &Pool<Self>,
                group: &str,
                now_ms: i64,
            ) -> Result<Vec<(String, i32)>, sqlx::Error> {
                sqlx::query_as(&$sql(DUE_PARTITIONS)).bind(group).bind(now_ms).fetch_all(pool).await
            }

            async fn heads(
                pool: &Pool<Self>,
                group: &str,
                partition: (&str, i32),
                now_ms: i64,
                limit: i64,
            ) -> Result<Vec<BlockedRow>, sqlx::Error> {
                sqlx::query_as(&$sql(&heads()))
                    .bind(group)
                    .bind(partition.0)
                    .bind(partition.1)
                    .bind(now_ms)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
            }

            async fn reschedule(
                pool: &Pool<Self>,
                group: &str,
                row: &BlockedRow,
                error: &str,
            ) -> Result<(), sqlx::Error> {
                sqlx::query(&$sql(RESCHEDULE))
                    .bind(row.attempt)
                    .bind(row.due_at_ms)
                    .bind(error)
                    .bind(group)
                    .bind(&row.topic)
                    .bind(row.kafka_partition)
                    .bind(row.kafka_offset)
                    .execute(pool)
                    .await
                    .map(|_| ())
            }

            async fn release_blocked(pool: &Pool<Self>, group: &str, row: &BlockedRow) -> Result<(), sqlx::Error> {
                sqlx::query(&$sql(RELEASE))
                    .bind(group)
                    .bind(&row.topic)
                    .bind(row.kafka_partition)
                    .bind(row.kafka_offset)
                    .execute(pool)
                    .await
                    .map(|_| ())
            }

            async fn blocked_count(pool: &Pool<Self>, group: &str) -> Result<i64, sqlx::Error> {
                sqlx::query_scalar(&$sql(COUNT)).bind(group).fetch_one(pool).await
            }
        }
    };
}

#[cfg(feature = "postgres")]
impl_blocked_store!(sqlx::Postgres, super::same_sql);
#[cfg(feature = "sqlite")]
impl_blocked_store!(sqlx::Sqlite, super::same_sql);
#[cfg(feature = "mysql")]
impl_blocked_store!(sqlx::MySql, super::mysql::dialect);
