//! PostgreSQL: the production backend.

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;
use sqlx::types::Json;
use sqlx::{PgConnection, Pool, Postgres, Transaction};
use uuid::Uuid;

use super::sealed::Sealed;
use super::{
    DedupSql, NamedLock, NewOutboxRow, OutboxColumns, OutboxRow, ParkRow, Published, RelaySql, TransactionState,
};
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

impl Sealed for Postgres {
    const NAME: &'static str = "postgres";

    fn migrations() -> &'static sqlx::migrate::Migrator {
        &MIGRATIONS
    }

    fn run_migrator<'a>(
        migrator: &'a sqlx::migrate::Migrator,
        pool: &'a Pool<Self>,
    ) -> impl Future<Output = Result<(), sqlx::migrate::MigrateError>> + Send + 'a {
        migrator.run(pool)
    }

    fn begin_write(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<Transaction<'static, Self>, sqlx::Error>> + Send + '_ {
        pool.begin()
    }

    fn outbox_insert_sql(table: &str) -> String {
        super::outbox_insert_sql(table)
    }

    async fn insert_outbox<'a>(
        conn: &'a mut PgConnection,
        sql: &'a str,
        row: NewOutboxRow<'a>,
    ) -> Result<(), sqlx::Error> {
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

    fn relay_sql(t: &str, delete_on_delivery: bool) -> RelaySql {
        RelaySql {
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
            park_malformed: String::new(),
            cleanup: format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE delivered_at < $1 LIMIT 10000)"
            ),
        }
    }

    async fn relay_batch<'a, F, Fut>(
        pool: &'a Pool<Self>,
        sql: &'a RelaySql,
        limit: i64,
        max_attempts: i32,
        publish: F,
    ) -> Result<Option<Published>, Error>
    where
        F: FnOnce(Vec<OutboxRow>) -> Fut + Send + 'a,
        Fut: Future<Output = Published> + Send + 'a,
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
        let rows = rows.into_iter().map(|r| r.columns.with_id(r.id)).collect();
        let published = publish(rows).await;
        if !published.delivered.is_empty() {
            sqlx::query(&sql.mark)
                .bind(&published.delivered)
                .execute(&mut *tx)
                .await
                .map_err(Error::db("mark outbox rows delivered"))?;
        }
        if !published.failed.is_empty() {
            let ids: Vec<Uuid> = published.failed.iter().map(|f| f.id).collect();
            let errors: Vec<&str> = published.failed.iter().map(|f| f.error.as_str()).collect();
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

    async fn cleanup_outbox<'a>(
        pool: &'a Pool<Self>,
        sql: &'a RelaySql,
        older_than: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        sqlx::query(&sql.cleanup).bind(older_than).execute(pool).await.map(|r| r.rows_affected())
    }

    async fn outbox_listener(pool: &Pool<Self>) -> Option<PgListener> {
        let mut listener = match PgListener::connect_with(pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay cannot LISTEN; polling only");
                return None;
            }
        };
        match listener.listen(crate::schema::NOTIFY_CHANNEL).await {
            Ok(()) => Some(listener),
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay cannot LISTEN; polling only");
                None
            }
        }
    }

    fn dedup_sql(t: &str) -> DedupSql {
        DedupSql {
            insert: format!("INSERT INTO {t} (consumer_group, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"),
            insert_batch: format!(
                "INSERT INTO {t} (consumer_group, message_id) SELECT $1, id FROM unnest($2::uuid[]) AS u(id) \
                 ON CONFLICT DO NOTHING RETURNING message_id"
            ),
            prune: format!(
                "DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM {t} WHERE consumer_group = $1 \
                 AND processed_at < $2 LIMIT 10000)"
            ),
        }
    }

    async fn insert_dedup<'a>(
        conn: &'a mut PgConnection,
        sql: &'a DedupSql,
        group: &'a str,
        message_id: Uuid,
    ) -> Result<u64, sqlx::Error> {
        sqlx::query(&sql.insert).bind(group).bind(message_id).execute(conn).await.map(|r| r.rows_affected())
    }

    async fn insert_dedup_batch<'a>(
        conn: &'a mut PgConnection,
        sql: &'a DedupSql,
        group: &'a str,
        message_ids: &'a [Uuid],
    ) -> Result<std::collections::HashSet<Uuid>, sqlx::Error> {
        let ids: Vec<Uuid> =
            sqlx::query_scalar(&sql.insert_batch).bind(group).bind(message_ids).fetch_all(conn).await?;
        Ok(ids.into_iter().collect())
    }

    async fn check_transaction(conn: &mut PgConnection) -> Result<TransactionState, sqlx::Error> {
        match sqlx::query("SELECT 1").execute(conn).await {
            Ok(_) => Ok(TransactionState::Open),
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("25P02") => Ok(TransactionState::Aborted),
            Err(e) => Err(e),
        }
    }

    async fn prune_dedup<'a>(
        pool: &'a Pool<Self>,
        sql: &'a DedupSql,
        group: &'a str,
        older_than: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        sqlx::query(&sql.prune).bind(group).bind(older_than).execute(pool).await.map(|r| r.rows_affected())
    }

    fn park_sql(t: &str) -> String {
        super::park_insert_sql(t)
    }

    async fn park<'a>(pool: &'a Pool<Self>, sql: &'a str, row: ParkRow<'a>) -> Result<(), sqlx::Error> {
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

    async fn try_lock<'a>(pool: &'a Pool<Self>, name: &'a str) -> Result<Option<NamedLock>, sqlx::Error> {
        // A session lock on a pooled connection, released at the end of the run (or
        // when the connection dies with its process).
        let mut conn = pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
        Ok(locked.then(|| NamedLock::Postgres(conn, name.to_owned())))
    }
}
