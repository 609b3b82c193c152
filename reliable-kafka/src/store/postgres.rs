//! PostgreSQL: the production backend (feature `postgres`).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, Pool, Postgres, Transaction};
use uuid::Uuid;

use super::dedup::DedupStore;
use super::lock::LockStore;
use super::park::{ParkRow, ParkStore, ParkedMessage};
use super::{sql, TransactionState, Transactions};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

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

/// The statements for one deduplication table.
#[derive(Debug)]
pub struct PgDedupSql {
    insert: String,
    insert_batch: String,
    prune: String,
    lock_watermarks: String,
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
            // The no-op update locks an existing row.
            lock_watermarks: format!(
                "INSERT INTO rk_watermarks (consumer_group, topic, kafka_partition, source, seq, bootstrap_until) \
                 SELECT $1, $2, $3, s, 0, CASE WHEN EXISTS (SELECT 1 FROM {t} WHERE consumer_group = $1) \
                 THEN now() + make_interval(secs => $5) END FROM unnest($4::text[]) AS u(s) \
                 ON CONFLICT (consumer_group, topic, kafka_partition, source) DO UPDATE SET seq = rk_watermarks.seq \
                 RETURNING source, seq, COALESCE(bootstrap_until > now(), false)"
            ),
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

    const WATERMARKS: bool = true;

    async fn lock_watermarks(
        conn: &mut PgConnection,
        sql: &PgDedupSql,
        retention: std::time::Duration,
        group: &str,
        topic: &str,
        partition: i32,
        sources: &[&str],
    ) -> Result<Vec<(String, i64, bool)>, sqlx::Error> {
        sqlx::query_as(&sql.lock_watermarks)
            .bind(group)
            .bind(topic)
            .bind(partition)
            .bind(sources)
            .bind(retention.as_secs_f64())
            .fetch_all(conn)
            .await
    }

    async fn raise_watermarks(
        conn: &mut PgConnection,
        group: &str,
        topic: &str,
        partition: i32,
        sources: &[String],
        seqs: &[i64],
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE rk_watermarks w SET seq = u.seq, updated_at = now() \
             FROM unnest($4::text[], $5::int8[]) AS u(source, seq) \
             WHERE w.consumer_group = $1 AND w.topic = $2 AND w.kafka_partition = $3 AND w.source = u.source",
        )
        .bind(group)
        .bind(topic)
        .bind(partition)
        .bind(sources)
        .bind(seqs)
        .execute(conn)
        .await
        .map(|_| ())
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
