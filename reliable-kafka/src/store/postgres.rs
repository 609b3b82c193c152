//! PostgreSQL: the production backend (feature `postgres`).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;
use sqlx::types::Json;
use sqlx::{PgConnection, Pool, Postgres, Transaction};
use uuid::Uuid;

use super::dedup::DedupStore;
use super::lock::LockStore;
use super::outbox::{
    backlog, NewOutboxRow, OutboxBacklog, OutboxColumns, OutboxListener, OutboxRow, OutboxStore, Published,
};
use super::park::{ParkRow, ParkStore, ParkedMessage};
use super::{sql, TransactionState, Transactions};
use crate::Error;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The relay lock: a transaction-level advisory lock whose key is the outbox table's
/// OID in the low 32 bits and `0x524B` ("RK") above them, so relays of different tables
/// (or of the same table name in different schemas) never wait for each other.
const RELAY_LOCK_SQL: &str = "SELECT pg_try_advisory_xact_lock(($1::regclass::oid::bigint) | (x'524B'::bigint << 32))";

#[derive(sqlx::FromRow)]
struct PgOutboxRow {
    id: Uuid,
    #[sqlx(flatten)]
    columns: OutboxColumns,
}

impl Transactions for Postgres {
    const NAME: &'static str = "postgres";

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

    /// PostgreSQL turns `COMMIT` of a transaction aborted by a failed statement into
    /// `ROLLBACK` without an error; a probe statement tells (SQLSTATE 25P02).
    async fn check_transaction(conn: &mut PgConnection) -> Result<TransactionState, sqlx::Error> {
        match sqlx::query("SELECT 1").execute(conn).await {
            Ok(_) => Ok(TransactionState::Open),
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("25P02") => Ok(TransactionState::Aborted),
            Err(e) => Err(e),
        }
    }
}

/// The relay's statements for one outbox table.
#[derive(Debug)]
pub struct PgRelaySql {
    table: String,
    select: String,
    mark: String,
    fail: String,
    cleanup: String,
}

/// `LISTEN rk_outbox`.
#[derive(Debug)]
pub struct PgOutboxListener(PgListener);

impl OutboxListener for PgOutboxListener {
    async fn recv(&mut self) -> Result<(), sqlx::Error> {
        self.0.recv().await.map(|_| ())
    }
}

impl OutboxStore for Postgres {
    type RelaySql = PgRelaySql;
    type Listener = PgOutboxListener;

    async fn insert_outbox(conn: &mut PgConnection, sql: &str, row: NewOutboxRow<'_>) -> Result<(), sqlx::Error> {
        sqlx::query(sql)
            .bind(row.id)
            .bind(row.topic)
            .bind(row.key)
            .bind(row.event_type)
            .bind(row.schema_version)
            .bind(row.payload)
            .bind(row.content_type)
            .bind(Json(row.headers))
            .execute(conn)
            .await
            .map(|_| ())
    }

    fn relay_sql(t: &str, delete_on_delivery: bool) -> PgRelaySql {
        PgRelaySql {
            table: t.to_owned(),
            select: format!(
                "SELECT id, aggregatetype, aggregateid, type, schema_version, payload, content_type, headers, created_at \
                 FROM {t} WHERE delivered_at IS NULL AND parked_at IS NULL ORDER BY seq LIMIT $1"
            ),
            mark: if delete_on_delivery {
                format!("DELETE FROM {t} WHERE id = ANY($1)")
            } else {
                format!("UPDATE {t} SET delivered_at = now(), attempts = attempts + 1 WHERE id = ANY($1)")
            },
            fail: format!(
                "UPDATE {t} SET attempts = {t}.attempts + 1, last_error = u.err, \
                 parked_at = CASE WHEN u.permanent AND {t}.attempts + 1 >= $3 THEN now() END \
                 FROM unnest($1::uuid[], $2::text[], $4::bool[]) AS u(id, err, permanent) WHERE {t}.id = u.id"
            ),
            cleanup: sql::outbox_cleanup(t, "id"),
        }
    }

    async fn relay_batch<'a, F, Fut>(
        pool: &'a Pool<Self>,
        sql: &'a PgRelaySql,
        limit: i64,
        max_attempts: i32,
        publish: F,
    ) -> Result<Option<Published>, Error>
    where
        F: FnOnce(Vec<OutboxRow>) -> Fut + Send + 'a,
        Fut: std::future::Future<Output = Published> + Send + 'a,
    {
        // One transaction: lock, claim, publish, mark. A crash after publishing
        // republishes the batch (at-least-once).
        let mut tx = pool.begin().await.map_err(Error::db("begin relay transaction"))?;
        let locked: bool = sqlx::query_scalar(RELAY_LOCK_SQL)
            .bind(&sql.table)
            .fetch_one(&mut *tx)
            .await
            .map_err(Error::db("take relay lock"))?;
        if !locked {
            return Ok(None);
        }
        let rows: Vec<PgOutboxRow> = sqlx::query_as(&sql.select)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db("claim outbox rows"))?;
        if rows.is_empty() {
            return Ok(Some(Published::default()));
        }
        let published = publish(rows.into_iter().map(|r| r.columns.with_id(r.id)).collect()).await;
        if !published.delivered.is_empty() {
            sqlx::query(&sql.mark)
                .bind(&published.delivered)
                .execute(&mut *tx)
                .await
                .map_err(Error::db("mark outbox rows delivered"))?;
        }
        if !published.failed.is_empty() {
            let ids: Vec<Uuid> = published.failed.iter().map(|f| f.id).collect();
            let errors: Vec<String> = published.failed.iter().map(|f| f.message()).collect();
            let permanent: Vec<bool> = published.failed.iter().map(|f| f.permanent).collect();
            sqlx::query(&sql.fail)
                .bind(&ids)
                .bind(&errors)
                .bind(max_attempts)
                .bind(&permanent)
                .execute(&mut *tx)
                .await
                .map_err(Error::db("record outbox send failure"))?;
        }
        tx.commit().await.map_err(Error::db("commit relay transaction"))?;
        Ok(Some(published))
    }

    async fn cleanup_outbox(
        pool: &Pool<Self>,
        sql: &PgRelaySql,
        older_than: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        sqlx::query(&sql.cleanup).bind(older_than).execute(pool).await.map(|r| r.rows_affected())
    }

    async fn outbox_listener(pool: &Pool<Self>) -> Option<PgOutboxListener> {
        let listen = async {
            let mut listener = PgListener::connect_with(pool).await?;
            listener.listen(crate::schema::NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listen.await {
            Ok(l) => Some(PgOutboxListener(l)),
            Err(e) => {
                tracing::warn!(error = %crate::report(&e), "outbox relay cannot LISTEN; polling only");
                None
            }
        }
    }

    async fn outbox_backlog(pool: &Pool<Self>, sql: &str) -> Result<OutboxBacklog, sqlx::Error> {
        let (pending, oldest, parked, delivered): (i64, Option<DateTime<Utc>>, i64, i64) =
            sqlx::query_as(sql).fetch_one(pool).await?;
        Ok(backlog(pending, oldest, parked, delivered))
    }
}

/// The statements for one deduplication table.
#[derive(Debug)]
pub struct PgDedupSql {
    insert: String,
    insert_batch: String,
    prune: String,
}

impl DedupStore for Postgres {
    type DedupSql = PgDedupSql;

    fn dedup_sql(t: &str) -> PgDedupSql {
        PgDedupSql {
            insert: sql::dedup_insert(t),
            insert_batch: format!(
                "INSERT INTO {t} (consumer_group, message_id) SELECT $1, id FROM unnest($2::uuid[]) AS u(id) \
                 ON CONFLICT DO NOTHING RETURNING message_id"
            ),
            prune: sql::dedup_prune(t, "ctid"),
        }
    }

    async fn insert_dedup(
        conn: &mut PgConnection,
        sql: &PgDedupSql,
        group: &str,
        message_id: Uuid,
    ) -> Result<bool, sqlx::Error> {
        sqlx::query(&sql.insert).bind(group).bind(message_id).execute(conn).await.map(|r| r.rows_affected() == 1)
    }

    async fn insert_dedup_batch(
        conn: &mut PgConnection,
        sql: &PgDedupSql,
        group: &str,
        message_ids: &[Uuid],
    ) -> Result<HashSet<Uuid>, sqlx::Error> {
        let ids: Vec<Uuid> =
            sqlx::query_scalar(&sql.insert_batch).bind(group).bind(message_ids).fetch_all(conn).await?;
        Ok(ids.into_iter().collect())
    }

    async fn prune_dedup(
        pool: &Pool<Self>,
        sql: &PgDedupSql,
        group: &str,
        older_than: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        sqlx::query(&sql.prune).bind(group).bind(older_than).execute(pool).await.map(|r| r.rows_affected())
    }
}

impl ParkStore for Postgres {
    async fn park(pool: &Pool<Self>, sql: &str, row: ParkRow<'_>) -> Result<(), sqlx::Error> {
        // PostgreSQL `text` cannot hold NUL; a record must never block its partition.
        let text = |v: String| if v.contains('\0') { v.replace('\0', "\u{FFFD}") } else { v };
        sqlx::query(sql)
            .bind(row.dead_letter_topic)
            .bind(row.dead_letter_partition)
            .bind(row.dead_letter_offset)
            .bind(row.message_id.map(text))
            .bind(row.original_topic.map(text))
            .bind(row.original_partition)
            .bind(row.original_offset)
            .bind(row.consumer_group.map(text))
            .bind(text(row.reason))
            .bind(row.error_message.map(text))
            .bind(row.attempts)
            .bind(row.redrive_count)
            .bind(row.key)
            .bind(row.payload)
            .bind(Json(row.headers))
            .bind(row.dead_lettered_at)
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

/// A session advisory lock on a pooled connection, released at the end of the run (or
/// when the connection dies with its process).
#[derive(Debug)]
pub struct PgAdvisoryLock {
    conn: sqlx::pool::PoolConnection<Postgres>,
    name: String,
}

impl LockStore for Postgres {
    type Lock = PgAdvisoryLock;

    async fn try_lock(pool: &Pool<Self>, name: &str) -> Result<Option<PgAdvisoryLock>, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
        Ok(locked.then(|| PgAdvisoryLock { conn, name: name.to_owned() }))
    }

    /// A connection whose unlock fails is closed rather than returned to the pool
    /// still holding the lock.
    async fn release(lock: PgAdvisoryLock) {
        let PgAdvisoryLock { mut conn, name } = lock;
        if let Err(e) =
            sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))").bind(&name).execute(&mut *conn).await
        {
            tracing::warn!(error = %e, "advisory unlock failed; closing the connection");
            let _ = conn.detach();
        }
    }
}
