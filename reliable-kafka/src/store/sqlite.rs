//! SQLite: the embedded default (feature `sqlite`).
//!
//! SQLite has one writer at a time, so commit order is insertion order: the relay
//! reads pending rows outside a transaction (rows of uncommitted transactions are
//! invisible, and none can commit later with a smaller `seq`), publishes them, and
//! marks them in a short write transaction.

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::types::Json;
use sqlx::{Pool, Sqlite, SqliteConnection, Transaction};
use uuid::Uuid;

use super::dedup::DedupStore;
use super::lock::{LocalLock, LockStore};
use super::outbox::{
    backlog, decode_text_id_rows, NewOutboxRow, NoListener, OutboxBacklog, OutboxRow, OutboxStore, Published,
};
use super::park::{ParkRow, ParkStore, ParkedMessage};
use super::{sql, TransactionState, Transactions};
use crate::Error;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Timestamps are RFC 3339 text in UTC with milliseconds, as the tables' defaults
/// write them (`strftime('%Y-%m-%dT%H:%M:%fZ', 'now')`), so that they compare as text.
fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

impl Transactions for Sqlite {
    const NAME: &'static str = "sqlite";

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
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// A failed statement does not abort an SQLite transaction: what succeeded commits.
    /// But after some errors (`SQLITE_FULL`, an I/O error, `SQLITE_NOMEM`) SQLite may
    /// roll the whole transaction back on its own, and the handler's later statements
    /// then run outside it. `BEGIN` tells: it fails inside a transaction and succeeds
    /// outside one. The transaction the probe then opens matches what sqlx believes (one
    /// open transaction), so the caller's rollback of an aborted transaction ends it.
    async fn check_transaction(conn: &mut SqliteConnection) -> Result<TransactionState, sqlx::Error> {
        match sqlx::query("BEGIN").persistent(false).execute(&mut *conn).await {
            Err(sqlx::Error::Database(db)) if db.message().contains("within a transaction") => {
                Ok(TransactionState::Open)
            }
            Err(e) => Err(e),
            Ok(_) => Ok(TransactionState::Aborted),
        }
    }
}

/// The relay's statements for one outbox table.
#[derive(Debug)]
pub struct LiteRelaySql {
    table: String,
    select: String,
    mark: String,
    fail: String,
    cleanup: String,
    /// Parks a row that cannot be read, by `seq` (PostgreSQL's typed columns cannot
    /// hold such rows).
    park_malformed: String,
}

impl OutboxStore for Sqlite {
    type RelaySql = LiteRelaySql;
    type Listener = NoListener;
    type RelayLease = LocalLock;
    const SHARDED_RELAY: bool = false;

    async fn insert_outbox(conn: &mut SqliteConnection, sql: &str, row: NewOutboxRow<'_>) -> Result<(), sqlx::Error> {
        sqlx::query(sql)
            .bind(row.id.hyphenated().to_string())
            .bind(row.topic)
            .bind(row.key)
            .bind(row.event_type)
            .bind(row.schema_version)
            .bind(row.payload)
            .bind(row.content_type)
            .bind(Json(row.headers))
            .bind(row.key_hash)
            .execute(conn)
            .await
            .map(|_| ())
    }

    /// One shard only: several relays on one SQLite file are not supported.
    fn relay_sql(t: &str, delete_on_delivery: bool, _shards: u32, _sequenced: bool) -> LiteRelaySql {
        LiteRelaySql {
            table: t.to_owned(),
            select: format!(
                "SELECT seq, id, aggregatetype, aggregateid, type, schema_version, payload, content_type, headers, created_at \
                 FROM {t} WHERE delivered_at IS NULL AND parked_at IS NULL \
                 AND seq NOT IN (SELECT value FROM json_each($2)) ORDER BY seq LIMIT $1"
            ),
            park_malformed: format!("UPDATE {t} SET parked_at = {NOW}, attempts = attempts + 1, last_error = $2 WHERE seq = $1"),
            mark: if delete_on_delivery {
                format!("DELETE FROM {t} WHERE id IN (SELECT value FROM json_each($1))")
            } else {
                format!(
                    "UPDATE {t} SET delivered_at = {NOW}, attempts = attempts + 1 \
                     WHERE id IN (SELECT value FROM json_each($1))"
                )
            },
            fail: format!(
                "UPDATE {t} SET attempts = attempts + 1, last_error = $2, \
                 parked_at = CASE WHEN $3 AND attempts + 1 >= $4 THEN {NOW} END WHERE id = $1"
            ),
            cleanup: sql::outbox_cleanup(t, "seq"),
        }
    }

    async fn lease_relay(pool: &Pool<Self>, sql: &LiteRelaySql) -> Result<Option<LocalLock>, Error> {
        // Two relays of one process on the same table would publish the same rows: one
        // at a time (relays in several processes on one SQLite file are not supported).
        let name = format!("relay:{}:{}", pool.connect_options().get_filename().display(), sql.table);
        Ok(LocalLock::try_take(&name))
    }

    async fn rebalance_relay(_lease: &mut LocalLock, _sql: &LiteRelaySql) -> Result<Vec<u32>, Error> {
        Ok(vec![0])
    }

    async fn release_relay(lease: LocalLock) {
        drop(lease);
    }

    async fn claim_outbox(
        pool: &Pool<Self>,
        _lease: &mut LocalLock,
        sql: &LiteRelaySql,
        limit: i64,
        in_flight: &[i64],
    ) -> Result<Vec<OutboxRow>, Error> {
        let rows: Vec<sqlx::sqlite::SqliteRow> = sqlx::query(&sql.select)
            .bind(limit)
            .bind(Json(in_flight))
            .fetch_all(pool)
            .await
            .map_err(Error::db("claim outbox rows"))?;
        let (claimed, malformed) = decode_text_id_rows(rows)?;
        if !malformed.is_empty() {
            let mut tx = Self::begin_write(pool).await.map_err(Error::db("begin relay transaction"))?;
            for (seq, why) in &malformed {
                sqlx::query(&sql.park_malformed)
                    .bind(seq)
                    .bind(why)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db("park malformed outbox row"))?;
            }
            tx.commit().await.map_err(Error::db("commit relay transaction"))?;
        }
        Ok(claimed)
    }

    async fn settle_outbox(
        pool: &Pool<Self>,
        sql: &LiteRelaySql,
        published: &Published,
        max_attempts: i32,
    ) -> Result<(), Error> {
        if published.delivered.is_empty() && published.failed.is_empty() {
            return Ok(());
        }
        let mut tx = Self::begin_write(pool).await.map_err(Error::db("begin relay transaction"))?;
        if !published.delivered.is_empty() {
            let ids: Vec<String> = published.delivered.iter().map(|id| id.hyphenated().to_string()).collect();
            sqlx::query(&sql.mark)
                .bind(Json(ids))
                .execute(&mut *tx)
                .await
                .map_err(Error::db("mark outbox rows delivered"))?;
        }
        for f in &published.failed {
            sqlx::query(&sql.fail)
                .bind(f.id.hyphenated().to_string())
                .bind(f.message())
                .bind(f.permanent)
                .bind(max_attempts)
                .execute(&mut *tx)
                .await
                .map_err(Error::db("record outbox send failure"))?;
        }
        tx.commit().await.map_err(Error::db("commit relay transaction"))?;
        Ok(())
    }

    async fn cleanup_outbox(
        pool: &Pool<Self>,
        sql: &LiteRelaySql,
        older_than: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        sqlx::query(&sql.cleanup).bind(timestamp(older_than)).execute(pool).await.map(|r| r.rows_affected())
    }

    async fn outbox_listener(_pool: &Pool<Self>) -> Option<NoListener> {
        None
    }

    async fn outbox_backlog(pool: &Pool<Self>, sql: &str) -> Result<OutboxBacklog, sqlx::Error> {
        let (pending, oldest, parked, delivered): (i64, Option<DateTime<Utc>>, i64, i64) =
            sqlx::query_as(sql).fetch_one(pool).await?;
        Ok(backlog(pending, oldest, parked, delivered))
    }
}

/// The statements for one deduplication table. In process, one prepared statement
/// per row is as fast as a multi-row one.
#[derive(Debug)]
pub struct LiteDedupSql {
    insert: String,
    prune: String,
}

impl DedupStore for Sqlite {
    type DedupSql = LiteDedupSql;

    fn dedup_sql(t: &str) -> LiteDedupSql {
        LiteDedupSql { insert: sql::dedup_insert(t), prune: sql::dedup_prune(t, "rowid") }
    }

    async fn insert_dedup(
        conn: &mut SqliteConnection,
        sql: &LiteDedupSql,
        group: &str,
        message_id: Uuid,
    ) -> Result<bool, sqlx::Error> {
        let mut buf = Uuid::encode_buffer();
        let id: &str = message_id.hyphenated().encode_lower(&mut buf);
        sqlx::query(&sql.insert).bind(group).bind(id).execute(conn).await.map(|r| r.rows_affected() == 1)
    }

    async fn prune_dedup(
        pool: &Pool<Self>,
        sql: &LiteDedupSql,
        group: &str,
        older_than: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        sqlx::query(&sql.prune).bind(group).bind(timestamp(older_than)).execute(pool).await.map(|r| r.rows_affected())
    }
}

impl ParkStore for Sqlite {
    async fn park(pool: &Pool<Self>, sql: &str, row: ParkRow<'_>) -> Result<(), sqlx::Error> {
        sqlx::query(sql)
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
            .bind(Json(row.headers))
            .bind(row.dead_lettered_at.map(timestamp))
            .execute(pool)
            .await
            .map(|_| ())
    }

    async fn parked_list(pool: &Pool<Self>, sql: &str, limit: i64) -> Result<Vec<ParkedMessage>, sqlx::Error> {
        sqlx::query_as(sql).bind(limit).fetch_all(pool).await
    }

    async fn parked_count(pool: &Pool<Self>, sql: &str) -> Result<u64, sqlx::Error> {
        sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.map(|n| n.max(0) as u64)
    }
}

impl LockStore for Sqlite {
    type Lock = LocalLock;

    async fn try_lock(_pool: &Pool<Self>, name: &str) -> Result<Option<LocalLock>, sqlx::Error> {
        Ok(LocalLock::try_take(name))
    }

    async fn release(lock: LocalLock) {
        drop(lock);
    }
}
