//! SQLite: the embedded default.
//!
//! SQLite has one writer at a time, so commit order is insertion order: the relay
//! reads pending rows outside a transaction (rows of uncommitted transactions are
//! invisible, and none can commit later with a smaller `seq`), publishes them, and
//! marks them in a short write transaction.

use std::future::Future;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::types::Json;
use sqlx::{FromRow, Row};
use sqlx::{Pool, Sqlite, SqliteConnection, Transaction};
use uuid::Uuid;

use super::sealed::Sealed;
use super::{
    DedupSql, NamedLock, NewOutboxRow, OutboxColumns, OutboxRow, ParkRow, Published, RelaySql, TransactionState,
};
use crate::Error;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Timestamps are RFC 3339 text in UTC with milliseconds, as the tables' defaults
/// write them (`strftime('%Y-%m-%dT%H:%M:%fZ', 'now')`), so that they compare as text.
fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

#[derive(sqlx::FromRow)]
struct LiteOutboxRow {
    id: String,
    #[sqlx(flatten)]
    columns: OutboxColumns,
}

impl Sealed for Sqlite {
    const NAME: &'static str = "sqlite";

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
        pool.begin_with("BEGIN IMMEDIATE")
    }

    fn outbox_insert_sql(table: &str) -> String {
        super::outbox_insert_sql(table)
    }

    async fn insert_outbox<'a>(
        conn: &'a mut SqliteConnection,
        sql: &'a str,
        row: NewOutboxRow<'a>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(sql)
            .bind(row.id.hyphenated().to_string())
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
                "SELECT seq, id, aggregatetype, aggregateid, type, schema_version, payload, content_type, headers, created_at \
                 FROM {t} WHERE delivered_at IS NULL AND parked_at IS NULL ORDER BY seq LIMIT $1"
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
            cleanup: format!(
                "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} WHERE delivered_at < $1 LIMIT 10000)"
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
        // Two relays of one process on the same table would publish the same rows: one
        // at a time (relays in several processes on one SQLite file are not supported).
        let name = format!("relay:{}:{}", pool.connect_options().get_filename().display(), sql.table);
        let Some(_lock) = super::LocalLock::try_take(&name) else {
            return Ok(None);
        };
        let rows: Vec<sqlx::sqlite::SqliteRow> =
            sqlx::query(&sql.select).bind(limit).fetch_all(pool).await.map_err(Error::db("claim outbox rows"))?;
        if rows.is_empty() {
            return Ok(Some(Published::default()));
        }
        let mut claimed = Vec::with_capacity(rows.len());
        // Rows another tool wrote that cannot be read (an id that is not a UUID, headers
        // that are not JSON) are parked with the reason instead of blocking the table.
        let mut malformed: Vec<(i64, String)> = Vec::new();
        for row in rows {
            let seq: i64 = row.try_get("seq").map_err(Error::db("claim outbox rows"))?;
            let decoded =
                LiteOutboxRow::from_row(&row).map_err(|e| e.to_string()).and_then(|r| match Uuid::parse_str(&r.id) {
                    Ok(id) => Ok((id, r)),
                    Err(e) => Err(format!("id {:?} is not a UUID: {e}", r.id)),
                });
            let (id, r) = match decoded {
                Ok(ok) => ok,
                Err(why) => {
                    tracing::error!(seq, reason = %why, "malformed outbox row parked");
                    malformed.push((seq, format!("malformed outbox row: {why}")));
                    continue;
                }
            };
            claimed.push(r.columns.with_id(id));
        }
        let published = if claimed.is_empty() { Published::default() } else { publish(claimed).await };
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(Error::db("begin relay transaction"))?;
        for (seq, why) in &malformed {
            sqlx::query(&sql.park_malformed)
                .bind(seq)
                .bind(why)
                .execute(&mut *tx)
                .await
                .map_err(Error::db("park malformed outbox row"))?;
        }
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
                .bind(&f.error)
                .bind(f.permanent)
                .bind(max_attempts)
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
        sqlx::query(&sql.cleanup).bind(timestamp(older_than)).execute(pool).await.map(|r| r.rows_affected())
    }

    async fn outbox_listener(_pool: &Pool<Self>) -> Option<sqlx::postgres::PgListener> {
        None
    }

    fn dedup_sql(t: &str) -> DedupSql {
        DedupSql {
            insert: format!("INSERT INTO {t} (consumer_group, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"),
            // In process, one prepared statement per row is as fast as a multi-row one.
            insert_batch: String::new(),
            prune: format!(
                "DELETE FROM {t} WHERE rowid IN (SELECT rowid FROM {t} WHERE consumer_group = $1 \
                 AND processed_at < $2 LIMIT 10000)"
            ),
        }
    }

    async fn insert_dedup<'a>(
        conn: &'a mut SqliteConnection,
        sql: &'a DedupSql,
        group: &'a str,
        message_id: Uuid,
    ) -> Result<u64, sqlx::Error> {
        let mut buf = Uuid::encode_buffer();
        let id: &str = message_id.hyphenated().encode_lower(&mut buf);
        sqlx::query(&sql.insert).bind(group).bind(id).execute(conn).await.map(|r| r.rows_affected())
    }

    async fn insert_dedup_batch<'a>(
        conn: &'a mut SqliteConnection,
        sql: &'a DedupSql,
        group: &'a str,
        message_ids: &'a [Uuid],
    ) -> Result<std::collections::HashSet<Uuid>, sqlx::Error> {
        let mut new = std::collections::HashSet::with_capacity(message_ids.len());
        for id in message_ids {
            if Self::insert_dedup(&mut *conn, sql, group, *id).await? == 1 {
                new.insert(*id);
            }
        }
        Ok(new)
    }

    async fn check_transaction(_conn: &mut SqliteConnection) -> Result<TransactionState, sqlx::Error> {
        // A failed statement does not abort an SQLite transaction: what succeeded commits.
        Ok(TransactionState::Open)
    }

    async fn prune_dedup<'a>(
        pool: &'a Pool<Self>,
        sql: &'a DedupSql,
        group: &'a str,
        older_than: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        sqlx::query(&sql.prune).bind(group).bind(timestamp(older_than)).execute(pool).await.map(|r| r.rows_affected())
    }

    fn park_sql(t: &str) -> String {
        super::park_insert_sql(t)
    }

    async fn park<'a>(pool: &'a Pool<Self>, sql: &'a str, row: ParkRow<'a>) -> Result<(), sqlx::Error> {
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

    async fn try_lock<'a>(_pool: &'a Pool<Self>, name: &'a str) -> Result<Option<NamedLock>, sqlx::Error> {
        Ok(NamedLock::try_local(name))
    }
}
