//! MySQL and MariaDB (feature `mysql`): transactions, deduplication, parked records,
//! named locks, and the translation of the shared SQL into MySQL's dialect.
//!
//! Tested on MariaDB 10.11; the SQL keeps to what MySQL 8.0.13+ also runs (expression
//! defaults, `FOR UPDATE SKIP LOCKED` is not needed: one relay publishes at a time).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use sqlx::{MySql, MySqlConnection, Pool, Transaction};
use uuid::Uuid;

use super::dedup::DedupStore;
use super::lock::LockStore;
use super::park::{ParkRow, ParkStore, ParkedMessage};
use super::{sql, TransactionState, Transactions};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

/// The current time in UTC, as the tables' defaults write it (`DATETIME(6)`).
pub(crate) const NOW: &str = "UTC_TIMESTAMP(6)";

/// The shared SQL of `sql.rs` and `blocked.rs` in MySQL's dialect: `$n` placeholders
/// become `?` (the shared statements number them in the order they appear, checked by
/// this module's tests), and `INSERT … ON CONFLICT DO NOTHING` becomes
/// `INSERT IGNORE …` (which skips a row whose unique key exists).
pub(crate) fn dialect(sql: &str) -> Cow<'_, str> {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    const CONFLICT: &str = " ON CONFLICT DO NOTHING";
    if let Some(at) = out.find(CONFLICT) {
        out.replace_range(at..at + CONFLICT.len(), "");
        if let Some(rest) = out.strip_prefix("INSERT INTO ") {
            out = format!("INSERT IGNORE INTO {rest}");
        }
    }
    Cow::Owned(out)
}

/// A message id as the tables store it: hyphenated lowercase text.
pub(crate) fn id_text(id: Uuid) -> String {
    id.hyphenated().to_string()
}

/// MariaDB's `@@in_transaction` (MySQL has no such variable: error 1193).
const IN_TRANSACTION: &str = "SELECT CAST(@@in_transaction AS SIGNED)";

impl Transactions for MySql {
    const NAME: &'static str = "mysql";

    fn migrations() -> &'static sqlx::migrate::Migrator {
        &MIGRATIONS
    }

    async fn run_migrator(
        migrator: &sqlx::migrate::Migrator,
        pool: &Pool<Self>,
    ) -> Result<(), sqlx::migrate::MigrateError> {
        migrator.run(pool).await
    }

    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error> {
        pool.begin().await
    }

    /// InnoDB rolls back only the failed statement, and the transaction stays usable;
    /// but a deadlock (error 1213) rolls back the whole transaction, and the handler's
    /// later statements then commit one by one (autocommit). MariaDB tells through
    /// `@@in_transaction`; on MySQL, which lacks the variable, the transaction is taken
    /// as open.
    async fn check_transaction(conn: &mut MySqlConnection) -> Result<TransactionState, sqlx::Error> {
        match sqlx::query_scalar::<_, i64>(IN_TRANSACTION).fetch_one(conn).await {
            Ok(0) => Ok(TransactionState::Aborted),
            Ok(_) => Ok(TransactionState::Open),
            Err(sqlx::Error::Database(db)) if mysql_error_number(&*db) == Some(1193) => Ok(TransactionState::Open),
            Err(e) => Err(e),
        }
    }
}

/// The server's error number of a MySQL error (1213 for a deadlock, say).
pub(crate) fn mysql_error_number(e: &dyn sqlx::error::DatabaseError) -> Option<u16> {
    e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().map(|m| m.number())
}

/// The statements for one deduplication table.
#[derive(Debug)]
pub struct MySqlDedupSql {
    insert: String,
    prune: String,
}

impl DedupStore for MySql {
    type DedupSql = MySqlDedupSql;

    fn dedup_sql(t: &str) -> MySqlDedupSql {
        MySqlDedupSql {
            insert: dialect(&sql::dedup_insert(t)).into_owned(),
            // MySQL takes no `LIMIT` in an `IN` subquery, but one on `DELETE`.
            prune: format!("DELETE FROM {t} WHERE consumer_group = ? AND processed_at < ? LIMIT {}", sql::DELETE_BATCH),
        }
    }

    async fn insert_dedup(
        conn: &mut MySqlConnection,
        sql: &MySqlDedupSql,
        group: &str,
        message_id: Uuid,
    ) -> Result<bool, sqlx::Error> {
        let mut buf = Uuid::encode_buffer();
        let id: &str = message_id.hyphenated().encode_lower(&mut buf);
        sqlx::query(&sql.insert).bind(group).bind(id).execute(conn).await.map(|r| r.rows_affected() == 1)
    }

    async fn prune_dedup(
        pool: &Pool<Self>,
        sql: &MySqlDedupSql,
        group: &str,
        older_than: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        sqlx::query(&sql.prune).bind(group).bind(older_than).execute(pool).await.map(|r| r.rows_affected())
    }
}

impl ParkStore for MySql {
    async fn park(pool: &Pool<Self>, sql: &str, row: ParkRow<'_>) -> Result<(), sqlx::Error> {
        sqlx::query(&dialect(sql))
            .bind(row.dead_letter_topic)
            .bind(row.dead_letter_partition)
            .bind(row.dead_letter_offset)
            .bind(row.message_id)
            .bind(row.original_topic)
            .bind(row.original_partition)
            .bind(row.original_offset)
            .bind(row.consumer_group)
            .bind(row.reason)
            .bind(row.error_message)
            .bind(row.attempts)
            .bind(row.redrive_count)
            .bind(row.key)
            .bind(row.payload)
            // JSON as text: MariaDB's JSON is LONGTEXT, and it refuses MySQL's JSON
            // parameter type.
            .bind(row.headers.to_string())
            .bind(row.dead_lettered_at)
            .execute(pool)
            .await
            .map(|_| ())
    }

    async fn parked_list(pool: &Pool<Self>, sql: &str, limit: i64) -> Result<Vec<ParkedMessage>, sqlx::Error> {
        sqlx::query_as(&dialect(sql)).bind(limit).fetch_all(pool).await
    }

    async fn parked_count(pool: &Pool<Self>, sql: &str) -> Result<u64, sqlx::Error> {
        sqlx::query_scalar::<_, i64>(&dialect(sql)).fetch_one(pool).await.map(|n| n.max(0) as u64)
    }
}

/// The name `GET_LOCK` takes for `name` in the connection's database: locks are
/// server-wide and their names at most 64 characters, so the database and the name are
/// hashed (`rk:` and 40 hex digits).
pub(crate) const LOCK_NAME: &str = "CONCAT('rk:', SHA1(CONCAT(DATABASE(), '/', ?)))";

/// A `GET_LOCK` lock held by a pooled connection, released at the end of the run (or
/// when the connection dies with its process).
#[derive(Debug)]
pub struct MySqlNamedLock {
    conn: sqlx::pool::PoolConnection<MySql>,
    name: String,
}

/// Takes the named lock `name` on `conn` without waiting.
pub(crate) async fn get_lock(conn: &mut MySqlConnection, name: &str) -> Result<bool, sqlx::Error> {
    let locked: Option<i64> = sqlx::query_scalar(&format!("SELECT CAST(GET_LOCK({LOCK_NAME}, 0) AS SIGNED)"))
        .bind(name)
        .fetch_one(conn)
        .await?;
    Ok(locked == Some(1))
}

impl LockStore for MySql {
    type Lock = MySqlNamedLock;

    async fn try_lock(pool: &Pool<Self>, name: &str) -> Result<Option<MySqlNamedLock>, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let locked = get_lock(&mut conn, name).await?;
        Ok(locked.then(|| MySqlNamedLock { conn, name: name.to_owned() }))
    }

    /// A connection whose unlock fails is closed rather than returned to the pool
    /// still holding the lock.
    async fn release(lock: MySqlNamedLock) {
        let MySqlNamedLock { mut conn, name } = lock;
        let unlock = format!("SELECT RELEASE_LOCK({LOCK_NAME})");
        if let Err(e) = sqlx::query(&unlock).bind(&name).execute(&mut *conn).await {
            tracing::warn!(error = %e, "RELEASE_LOCK failed; closing the connection");
            let _ = conn.detach();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::dialect;
    use crate::store::{blocked, sql};

    /// Every shared statement numbers its placeholders in the order they appear, each
    /// once, so that `?` binds them in the same order.
    #[test]
    fn shared_statements_number_placeholders_in_order() {
        let t = "rk_t";
        let statements = [
            sql::outbox_insert(t),
            sql::dedup_insert(t),
            sql::outbox_backlog(t),
            sql::relay_gauges(t),
            sql::park_insert(t),
            sql::parked_list(t),
            sql::outbox_topics(t),
            sql::outbox_retry(t),
            sql::parked_get(t),
            sql::parked_delete(t),
            sql::audit_insert(),
            sql::audit_list(),
            sql::parked_count(t),
            blocked::IS_BLOCKED.to_owned(),
            blocked::DEFER.to_owned(),
            blocked::DUE_PARTITIONS.to_owned(),
            blocked::heads(),
            blocked::RESCHEDULE.to_owned(),
            blocked::RELEASE.to_owned(),
            blocked::COUNT.to_owned(),
        ];
        for s in &statements {
            let numbers: Vec<usize> = s
                .split('$')
                .skip(1)
                .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
                .collect();
            assert_eq!(numbers, (1..=numbers.len()).collect::<Vec<_>>(), "{s}");
            assert!(!s.contains("FILTER ("), "PostgreSQL-only syntax: {s}");
            let my = dialect(s);
            assert_eq!(my.matches('?').count(), numbers.len(), "{my}");
            assert!(!my.contains('$'), "{my}");
        }
    }

    #[test]
    fn on_conflict_do_nothing_becomes_insert_ignore() {
        assert_eq!(
            dialect("INSERT INTO rk_p (a, b) VALUES ($1, $2) ON CONFLICT DO NOTHING"),
            "INSERT IGNORE INTO rk_p (a, b) VALUES (?, ?)"
        );
        assert_eq!(dialect("SELECT a FROM t WHERE b = $10 LIMIT $2"), "SELECT a FROM t WHERE b = ? LIMIT ?");
    }
}
