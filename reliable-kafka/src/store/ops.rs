//! The statements of the operations API ([`crate::Operations`]): per-topic outbox
//! backlog, retrying parked outbox rows, deleting parked records, the audit table.
//! The SQL is the same on every backend (MySQL's translated); one impl per backend
//! (sqlx's types differ).

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::Pool;

/// One row of [`crate::Operations::audit_log`].
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
#[non_exhaustive]
pub struct AuditEntry {
    /// Row id, increasing.
    pub id: i64,
    /// When the operation ended.
    pub at: DateTime<Utc>,
    /// Who did it (the `--operator` of the CLI, `$USER` by default).
    pub operator: String,
    /// What: `dlq.replay`, `parked.replay`, `parked.purge` or `outbox.retry`.
    pub action: String,
    /// On what: a topic, a table, or a filter.
    pub target: String,
    /// Records affected.
    pub records: i64,
    /// The filters and options used, as text.
    pub detail: String,
}

/// `(topic, pending, oldest pending insert time, parked)`.
pub type TopicRow = (String, i64, Option<DateTime<Utc>>, i64);

/// The operations statements of a backend.
pub trait OpsStore: sqlx::Database + Sized {
    /// `(topic, pending, oldest pending insert time, parked)` per topic.
    fn outbox_topics<'a>(
        pool: &'a Pool<Self>,
        sql: &'a str,
    ) -> impl Future<Output = Result<Vec<TopicRow>, sqlx::Error>> + Send + 'a;

    /// Runs an `UPDATE`/`DELETE` whose one argument is optional text; returns the rows
    /// affected.
    fn execute_text<'a>(
        pool: &'a Pool<Self>,
        sql: &'a str,
        text: Option<&'a str>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;

    /// Runs an `UPDATE`/`DELETE` whose one argument is an id; returns the rows affected.
    fn execute_id<'a>(
        pool: &'a Pool<Self>,
        sql: &'a str,
        id: i64,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;

    /// Inserts an audit row.
    fn insert_audit<'a>(
        pool: &'a Pool<Self>,
        sql: &'a str,
        entry: (&'a str, &'a str, &'a str, i64, &'a str),
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// The newest audit rows, at most `limit`.
    fn audit_list<'a>(
        pool: &'a Pool<Self>,
        sql: &'a str,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, sqlx::Error>> + Send + 'a;
}

macro_rules! ops_store {
    ($db:ty, $sql:path) => {
        impl OpsStore for $db {
            async fn outbox_topics(pool: &Pool<Self>, sql: &str) -> Result<Vec<TopicRow>, sqlx::Error> {
                sqlx::query_as(&$sql(sql)).fetch_all(pool).await
            }

            async fn execute_text(pool: &Pool<Self>, sql: &str, text: Option<&str>) -> Result<u64, sqlx::Error> {
                Ok(sqlx::query(&$sql(sql)).bind(text).execute(pool).await?.rows_affected())
            }

            async fn execute_id(pool: &Pool<Self>, sql: &str, id: i64) -> Result<u64, sqlx::Error> {
                Ok(sqlx::query(&$sql(sql)).bind(id).execute(pool).await?.rows_affected())
            }

            async fn insert_audit(
                pool: &Pool<Self>,
                sql: &str,
                (operator, action, target, records, detail): (&str, &str, &str, i64, &str),
            ) -> Result<(), sqlx::Error> {
                sqlx::query(&$sql(sql))
                    .bind(operator)
                    .bind(action)
                    .bind(target)
                    .bind(records)
                    .bind(detail)
                    .execute(pool)
                    .await
                    .map(drop)
            }

            async fn audit_list(pool: &Pool<Self>, sql: &str, limit: i64) -> Result<Vec<AuditEntry>, sqlx::Error> {
                sqlx::query_as(&$sql(sql)).bind(limit).fetch_all(pool).await
            }
        }
    };
}

#[cfg(feature = "postgres")]
ops_store!(sqlx::Postgres, super::same_sql);
#[cfg(feature = "sqlite")]
ops_store!(sqlx::Sqlite, super::same_sql);
#[cfg(feature = "mysql")]
ops_store!(sqlx::MySql, super::mysql::dialect);
