//! MySQL's and MariaDB's outbox: the insert, the relay's lease (`GET_LOCK` on a
//! dedicated session), claim, settle, retention and the backlog.
//!
//! One relay instance publishes a table at a time: the lease is a named lock on the
//! database and table, held by a connection taken from the pool and detached from it,
//! so that the lock ends with the session (a relay that dies loses it, and another
//! instance takes over at its next try). Several instances sharing a table by shards
//! need PostgreSQL. Relays poll (`poll_interval`): MySQL has no `LISTEN`.

use chrono::{DateTime, Utc};
use sqlx::{Connection, MySql, MySqlConnection, Pool};

use super::mysql::{dialect, get_lock, id_text, NOW};
use super::outbox::{
    backlog, decode_text_id_rows, NewOutboxRow, NoListener, OutboxBacklog, OutboxRow, OutboxStore, Published,
};
use super::{sql, Transactions};
use crate::Error;

/// The relay's statements for one outbox table.
#[derive(Debug)]
pub struct MySqlRelaySql {
    table: String,
    /// The claim, without the rows in flight and the limit (added per claim).
    select: String,
    /// Marks (or deletes) delivered rows; the id list is added per batch.
    mark: String,
    fail: String,
    cleanup: String,
    /// Parks a row that cannot be read, by `seq`.
    park_malformed: String,
}

/// The relay's session, holding the table's lock.
#[derive(Debug)]
pub struct MySqlRelayLease {
    conn: MySqlConnection,
}

/// `?, ?, …` for `n` values.
fn placeholders(n: usize) -> String {
    let mut s = "?, ".repeat(n);
    s.truncate(s.len().saturating_sub(2));
    s
}

impl OutboxStore for MySql {
    type RelaySql = MySqlRelaySql;
    type Listener = NoListener;
    type RelayLease = MySqlRelayLease;
    const SHARDED_RELAY: bool = false;

    async fn insert_outbox(conn: &mut MySqlConnection, sql: &str, row: NewOutboxRow<'_>) -> Result<(), sqlx::Error> {
        let headers = serde_json::to_string(row.headers).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(&dialect(sql))
            .bind(id_text(row.id))
            .bind(row.topic)
            .bind(row.key)
            .bind(row.event_type)
            .bind(row.schema_version)
            .bind(row.payload)
            .bind(row.content_type)
            .bind(headers)
            .bind(row.key_hash)
            .execute(conn)
            .await
            .map(|_| ())
    }

    /// One shard only (`OutboxRelayBuilder::shards` refuses more).
    fn relay_sql(t: &str, delete_on_delivery: bool, _shards: u32, _sequenced: bool) -> MySqlRelaySql {
        MySqlRelaySql {
            table: t.to_owned(),
            select: format!(
                "SELECT seq, id, aggregatetype, aggregateid, type, schema_version, payload, content_type, headers, created_at \
                 FROM {t} WHERE delivered_at IS NULL AND parked_at IS NULL"
            ),
            mark: if delete_on_delivery {
                format!("DELETE FROM {t} WHERE id IN")
            } else {
                format!("UPDATE {t} SET delivered_at = {NOW}, attempts = attempts + 1 WHERE id IN")
            },
            // MySQL assigns left to right, each assignment seeing the ones before it:
            // `parked_at` reads `attempts` before it is incremented.
            fail: format!(
                "UPDATE {t} SET parked_at = CASE WHEN ? AND attempts + 1 >= ? THEN {NOW} END, \
                 attempts = attempts + 1, last_error = ? WHERE id = ?"
            ),
            cleanup: format!("DELETE FROM {t} WHERE delivered_at < ? LIMIT {}", sql::DELETE_BATCH),
            park_malformed: format!(
                "UPDATE {t} SET parked_at = {NOW}, attempts = attempts + 1, last_error = ? WHERE seq = ?"
            ),
        }
    }

    async fn lease_relay(pool: &Pool<Self>, sql: &MySqlRelaySql) -> Result<Option<MySqlRelayLease>, Error> {
        // From the pool, so that the session went through its `after_connect`.
        let mut conn = pool.acquire().await.map_err(Error::db("connect relay session"))?.detach();
        let locked =
            get_lock(&mut conn, &format!("relay:{}", sql.table)).await.map_err(Error::db("take relay lock"))?;
        Ok(locked.then_some(MySqlRelayLease { conn }))
    }

    async fn rebalance_relay(_lease: &mut MySqlRelayLease, _sql: &MySqlRelaySql) -> Result<Vec<u32>, Error> {
        Ok(vec![0])
    }

    async fn release_relay(lease: MySqlRelayLease) {
        if let Err(e) = lease.conn.close().await {
            tracing::debug!(error = %e, "relay session closed uncleanly");
        }
    }

    async fn claim_outbox(
        pool: &Pool<Self>,
        lease: &mut MySqlRelayLease,
        sql: &MySqlRelaySql,
        limit: i64,
        in_flight: &[i64],
    ) -> Result<Vec<OutboxRow>, Error> {
        // The rows in flight are `seq` numbers this relay read: inlined as literals.
        let skip = if in_flight.is_empty() {
            String::new()
        } else {
            let seqs: Vec<String> = in_flight.iter().map(i64::to_string).collect();
            format!(" AND seq NOT IN ({})", seqs.join(", "))
        };
        let select = format!("{}{skip} ORDER BY seq LIMIT ?", sql.select);
        let rows: Vec<sqlx::mysql::MySqlRow> = sqlx::query(&select)
            .bind(limit)
            .fetch_all(&mut lease.conn)
            .await
            .map_err(Error::db("claim outbox rows"))?;
        let (claimed, malformed) = decode_text_id_rows(rows)?;
        if !malformed.is_empty() {
            let mut tx = Self::begin_write(pool).await.map_err(Error::db("begin relay transaction"))?;
            for (seq, why) in &malformed {
                sqlx::query(&sql.park_malformed)
                    .bind(why)
                    .bind(seq)
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
        sql: &MySqlRelaySql,
        published: &Published,
        max_attempts: i32,
    ) -> Result<(), Error> {
        if published.delivered.is_empty() && published.failed.is_empty() {
            return Ok(());
        }
        let mut tx = Self::begin_write(pool).await.map_err(Error::db("begin relay transaction"))?;
        if !published.delivered.is_empty() {
            let mark = format!("{} ({})", sql.mark, placeholders(published.delivered.len()));
            let mut query = sqlx::query(&mark);
            for id in &published.delivered {
                query = query.bind(id_text(*id));
            }
            query.execute(&mut *tx).await.map_err(Error::db("mark outbox rows delivered"))?;
        }
        for f in &published.failed {
            sqlx::query(&sql.fail)
                .bind(f.permanent)
                .bind(max_attempts)
                .bind(f.message())
                .bind(id_text(f.id))
                .execute(&mut *tx)
                .await
                .map_err(Error::db("record outbox send failure"))?;
        }
        tx.commit().await.map_err(Error::db("commit relay transaction"))?;
        Ok(())
    }

    async fn cleanup_outbox(
        pool: &Pool<Self>,
        sql: &MySqlRelaySql,
        older_than: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        sqlx::query(&sql.cleanup).bind(older_than).execute(pool).await.map(|r| r.rows_affected())
    }

    async fn outbox_listener(_pool: &Pool<Self>) -> Option<NoListener> {
        None
    }

    async fn outbox_backlog(pool: &Pool<Self>, sql: &str) -> Result<OutboxBacklog, sqlx::Error> {
        let (pending, oldest, parked, delivered): (i64, Option<DateTime<Utc>>, i64, i64) =
            sqlx::query_as(&dialect(sql)).fetch_one(pool).await?;
        Ok(backlog(pending, oldest, parked, delivered))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_are_comma_separated() {
        assert_eq!(super::placeholders(3), "?, ?, ?");
        assert_eq!(super::placeholders(1), "?");
        assert_eq!(super::placeholders(0), "");
    }
}
