//! PostgreSQL's outbox: the insert, the relay's lease (session advisory locks on one
//! dedicated connection), claim, settle, retention and the backlog.
//!
//! **Unsharded** (one shard), the lease is one lock on the table: of several relay
//! instances exactly one publishes. **Sharded** (`shards` > 1), each instance takes a
//! member slot (a lock of its own) and, of the shards, those whose number modulo the
//! count of live members is its rank among them; a shard is a lock too, so no two
//! instances ever publish the same shard at once. Members see each other through
//! `pg_locks`: a member that dies loses its locks with its session, and the others
//! take its shards at their next rebalance. Sharded members hold the table's key
//! shared and an unsharded relay holds it exclusively, so the two kinds never publish
//! at once; a member finding another shard count in use waits (and logs why).

use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, Pool, Postgres};
use uuid::Uuid;

use super::outbox::{
    backlog, NewOutboxRow, OutboxBacklog, OutboxColumns, OutboxListener, OutboxRow, OutboxStore, Published,
};
use super::sql;
use crate::Error;

/// The unsharded relay lock: the outbox table's OID in the low 32 bits and `0x524B`
/// ("RK") above them, so relays of different tables (or of the same table name in
/// different schemas) never wait for each other. 0.1 relays took the same key as a
/// transaction lock, so old and new relays exclude each other during an upgrade.
const TABLE_LOCK_SQL: &str = "SELECT pg_try_advisory_lock(($1::regclass::oid::bigint) | (x'524B'::bigint << 32))";

/// Sharded locks use the two-key form `(table OID, n)`: shard `s` is `n = s`, member
/// slot `m` is `n = MEMBER_BASE + m`.
const MEMBER_BASE: i64 = 1_000_000;
/// Member slots tried before a relay gives up joining (more instances than this wait).
const MAX_MEMBERS: i64 = 4096;

const TRY_LOCK2_SQL: &str = "SELECT pg_try_advisory_lock($1::regclass::oid::int4, $2::int4)";
const TRY_LOCK2_SHARED_SQL: &str = "SELECT pg_try_advisory_lock_shared($1::regclass::oid::int4, $2::int4)";
/// Sharded members hold the table key shared: an unsharded relay (exclusive) and
/// sharded ones exclude each other.
const TABLE_SHARED_LOCK_SQL: &str =
    "SELECT pg_try_advisory_lock_shared(($1::regclass::oid::bigint) | (x'524B'::bigint << 32))";
/// Each member holds `(table OID, SHARD_COUNT_BASE + shards)` shared, so members can
/// see a shard count other than their own.
const SHARD_COUNT_BASE: i64 = 2_000_000;
const SHARD_COUNTS_SQL: &str = "SELECT DISTINCT objid::int8 - 2000000 FROM pg_locks \
     WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = $1::regclass::oid \
     AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND objid::int8 >= 2000000";
const UNLOCK2_SQL: &str = "SELECT pg_advisory_unlock($1::regclass::oid::int4, $2::int4)";
/// The member slots held now, in order.
const MEMBERS_SQL: &str = "SELECT objid::int8 - 1000000 FROM pg_locks \
     WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = $1::regclass::oid \
     AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND objid::int8 >= 1000000 AND objid::int8 < 2000000 ORDER BY 1";

#[derive(sqlx::FromRow)]
struct PgOutboxRow {
    seq: i64,
    id: Uuid,
    #[sqlx(flatten)]
    columns: OutboxColumns,
    /// Relays with sequence numbers: the row's number, if it has one, and its shard.
    #[sqlx(default)]
    relay_seq: Option<i64>,
    #[sqlx(default)]
    shard: i32,
}

/// Adds `k` to the counters of the given shards of a table (creating them with a random
/// source id), returning each shard's source and last number.
const COUNTERS_SQL: &str = "INSERT INTO rk_relay_sequences (outbox_table, shard, last_seq) \
     SELECT $1::regclass::oid::text, s, k FROM unnest($2::int4[], $3::int8[]) AS u(s, k) \
     ON CONFLICT (outbox_table, shard) DO UPDATE SET last_seq = rk_relay_sequences.last_seq + excluded.last_seq \
     RETURNING shard, source, last_seq";

/// The relay's statements for one outbox table.
#[derive(Debug)]
pub struct PgRelaySql {
    table: String,
    shards: u32,
    sequenced: bool,
    select: String,
    /// Sets `relay_seq` of rows by id (the primary key: `seq` has only the pending
    /// index, which a join cannot use).
    number: String,
    mark: String,
    fail: String,
    cleanup: String,
}

/// The relay's session and the locks it holds (see the module documentation): a
/// connection taken from the pool and detached from it (the pool opens a replacement),
/// so it went through the pool's `after_connect` (a service's `search_path`, say) like
/// every other statement the relay runs, the relay needs no more pool connections than
/// 0.1's did, and no lock outlives the lease (dropping it closes the session).
#[derive(Debug)]
pub struct PgRelayLease {
    conn: PgConnection,
    /// Sharded: this member's slot.
    slot: Option<i64>,
    /// The shards held, ascending (unsharded: `[0]`).
    shards: Vec<u32>,
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
    type RelayLease = PgRelayLease;
    const SHARDED_RELAY: bool = true;
    const SEQUENCED_RELAY: bool = true;

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
            .bind(row.key_hash)
            .execute(conn)
            .await
            .map(|_| ())
    }

    fn relay_sql(t: &str, delete_on_delivery: bool, shards: u32, sequenced: bool) -> PgRelaySql {
        // Rows written without `key_hash` (before the column, or by other writers)
        // keep one shard per key through PostgreSQL's own hash of it.
        let shard =
            format!("(COALESCE({t}.key_hash, hashtext({t}.aggregateid) & 2147483647, {t}.seq) % {shards})::int4");
        // `NOT IN (SELECT unnest(..))` is a hashed subplan: one probe per row scanned,
        // whatever the number of rows in flight.
        let sharded = if shards > 1 { format!(" AND {shard} = ANY($3::int4[])") } else { String::new() };
        let columns =
            "seq, id, aggregatetype, aggregateid, type, schema_version, payload, content_type, headers, created_at";
        let pending = format!(
            "{t} WHERE delivered_at IS NULL AND parked_at IS NULL AND seq NOT IN (SELECT unnest($2::int8[])){sharded}"
        );
        let select = if sequenced {
            // Numbered rows first, in number order (sent before: they go out again
            // before anything newer of their shard), then new rows in `seq` order.
            let shard = if shards > 1 { shard } else { "0".to_owned() };
            format!(
                "(SELECT {columns}, relay_seq, {shard} AS shard FROM {pending} AND relay_seq IS NOT NULL \
                 ORDER BY relay_seq LIMIT $1) UNION ALL \
                 (SELECT {columns}, relay_seq, {shard} AS shard FROM {pending} AND relay_seq IS NULL \
                 ORDER BY seq LIMIT $1) LIMIT $1"
            )
        } else {
            format!("SELECT {columns} FROM {pending} ORDER BY seq LIMIT $1")
        };
        // A send that failed without a fatal error was not written: a new number. So
        // does a row parked now: sent again once un-parked, after higher numbers.
        let renumber = if sequenced {
            ", relay_seq = CASE WHEN u.renumber OR (u.permanent AND {t}.attempts + 1 >= $3) THEN NULL ELSE {t}.relay_seq END"
        } else {
            ""
        };
        PgRelaySql {
            table: t.to_owned(),
            shards,
            sequenced,
            select,
            number: format!(
                "UPDATE {t} SET relay_seq = u.n FROM unnest($1::uuid[], $2::int8[]) AS u(id, n) WHERE {t}.id = u.id"
            ),
            mark: if delete_on_delivery {
                format!("DELETE FROM {t} WHERE id = ANY($1)")
            } else {
                format!("UPDATE {t} SET delivered_at = now(), attempts = attempts + 1 WHERE id = ANY($1)")
            },
            fail: format!(
                "UPDATE {t} SET attempts = {t}.attempts + 1, last_error = u.err, \
                 parked_at = CASE WHEN u.permanent AND {t}.attempts + 1 >= $3 THEN now() END{renumber} \
                 FROM unnest($1::uuid[], $2::text[], $4::bool[], $5::bool[]) AS u(id, err, permanent, renumber) \
                 WHERE {t}.id = u.id",
                renumber = renumber.replace("{t}", t)
            ),
            cleanup: sql::outbox_cleanup(t, "id"),
        }
    }

    async fn lease_relay(pool: &Pool<Self>, sql: &PgRelaySql) -> Result<Option<PgRelayLease>, Error> {
        // Not `PgConnection::connect_with(pool.connect_options())`: that skips the pool's
        // `after_connect`, and a relay of a table outside `public` then locked and
        // claimed another schema's table (or none).
        let mut conn = pool.acquire().await.map_err(Error::db("connect relay session"))?.detach();
        if sql.shards <= 1 {
            // Exclusive: no other relay of the table, sharded or not, publishes.
            let locked: bool = sqlx::query_scalar(TABLE_LOCK_SQL)
                .bind(&sql.table)
                .fetch_one(&mut conn)
                .await
                .map_err(Error::db("take relay lock"))?;
            return Ok(locked.then(|| PgRelayLease { conn, slot: None, shards: vec![0] }));
        }
        // Shared with the other sharded members, exclusive of an unsharded relay.
        let shared: bool = sqlx::query_scalar(TABLE_SHARED_LOCK_SQL)
            .bind(&sql.table)
            .fetch_one(&mut conn)
            .await
            .map_err(Error::db("take relay lock"))?;
        if !shared {
            return Ok(None);
        }
        // Members of another shard count would split the rows differently: refuse.
        try_lock2(&mut conn, TRY_LOCK2_SHARED_SQL, &sql.table, SHARD_COUNT_BASE + i64::from(sql.shards)).await?;
        let counts: Vec<i64> = sqlx::query_scalar(SHARD_COUNTS_SQL)
            .bind(&sql.table)
            .fetch_all(&mut conn)
            .await
            .map_err(Error::db("list relay shard counts"))?;
        if let Some(other) = counts.iter().find(|c| **c != i64::from(sql.shards)) {
            tracing::error!(
                table = %sql.table, shards = sql.shards, other,
                "relay instances of this table run with different shard counts; this one waits"
            );
            return Ok(None);
        }
        for slot in 0..MAX_MEMBERS {
            let locked = try_lock2(&mut conn, TRY_LOCK2_SQL, &sql.table, MEMBER_BASE + slot).await?;
            if locked {
                let mut lease = PgRelayLease { conn, slot: Some(slot), shards: Vec::new() };
                Self::rebalance_relay(&mut lease, sql).await?;
                return Ok(Some(lease));
            }
        }
        Ok(None)
    }

    async fn rebalance_relay(lease: &mut PgRelayLease, sql: &PgRelaySql) -> Result<Vec<u32>, Error> {
        let Some(slot) = lease.slot else { return Ok(lease.shards.clone()) };
        let members: Vec<i64> = sqlx::query_scalar(MEMBERS_SQL)
            .bind(&sql.table)
            .fetch_all(&mut lease.conn)
            .await
            .map_err(Error::db("list relay members"))?;
        let wanted = owned_shards(sql.shards, &members, slot);
        for s in lease.shards.clone() {
            if !wanted.contains(&s) {
                sqlx::query(UNLOCK2_SQL)
                    .bind(&sql.table)
                    .bind(s as i32)
                    .execute(&mut lease.conn)
                    .await
                    .map_err(Error::db("release relay shard"))?;
                lease.shards.retain(|h| *h != s);
                tracing::info!(table = %sql.table, shard = s, "relay shard released");
            }
        }
        for s in wanted {
            // A shard still held by its previous owner is taken at a later rebalance.
            if !lease.shards.contains(&s) && try_lock2(&mut lease.conn, TRY_LOCK2_SQL, &sql.table, i64::from(s)).await?
            {
                lease.shards.push(s);
                tracing::info!(table = %sql.table, shard = s, "relay shard taken");
            }
        }
        lease.shards.sort_unstable();
        Ok(lease.shards.clone())
    }

    async fn release_relay(lease: PgRelayLease) {
        // Closing the session releases every lock it holds.
        if let Err(e) = lease.conn.close().await {
            tracing::debug!(error = %e, "relay session closed uncleanly");
        }
    }

    async fn claim_outbox(
        _pool: &Pool<Self>,
        lease: &mut PgRelayLease,
        sql: &PgRelaySql,
        limit: i64,
        in_flight: &[i64],
    ) -> Result<Vec<OutboxRow>, Error> {
        if lease.shards.is_empty() {
            return Ok(Vec::new());
        }
        let shards: Vec<i32> = lease.shards.iter().map(|s| *s as i32).collect();
        let rows: Vec<PgOutboxRow> = sqlx::query_as(&sql.select)
            .bind(limit)
            .bind(in_flight)
            .bind(&shards)
            .fetch_all(&mut lease.conn)
            .await
            .map_err(Error::db("claim outbox rows"))?;
        if sql.sequenced && !rows.is_empty() {
            return number_rows(&mut lease.conn, sql, rows).await;
        }
        Ok(rows.into_iter().map(|r| r.columns.with_id(r.seq, r.id)).collect())
    }

    async fn settle_outbox(
        pool: &Pool<Self>,
        sql: &PgRelaySql,
        published: &Published,
        max_attempts: i32,
    ) -> Result<(), Error> {
        if published.failed.is_empty() {
            if !published.delivered.is_empty() {
                sqlx::query(&sql.mark)
                    .bind(&published.delivered)
                    .execute(pool)
                    .await
                    .map_err(Error::db("mark outbox rows delivered"))?;
            }
            return Ok(());
        }
        let mut tx = pool.begin().await.map_err(Error::db("begin relay transaction"))?;
        if !published.delivered.is_empty() {
            sqlx::query(&sql.mark)
                .bind(&published.delivered)
                .execute(&mut *tx)
                .await
                .map_err(Error::db("mark outbox rows delivered"))?;
        }
        let ids: Vec<Uuid> = published.failed.iter().map(|f| f.id).collect();
        let errors: Vec<String> = published.failed.iter().map(|f| f.message()).collect();
        let permanent: Vec<bool> = published.failed.iter().map(|f| f.permanent).collect();
        let renumber: Vec<bool> = published.failed.iter().map(|f| f.renumber).collect();
        sqlx::query(&sql.fail)
            .bind(&ids)
            .bind(&errors)
            .bind(max_attempts)
            .bind(&permanent)
            .bind(&renumber)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("record outbox send failure"))?;
        tx.commit().await.map_err(Error::db("commit relay transaction"))?;
        Ok(())
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

/// Gives the claimed rows without a number the next numbers of their shards, in claim
/// order, on the lease's session (only its owner numbers a shard), and returns the
/// rows with their `<source>:<n>` (`outbox/sequence.rs`).
async fn number_rows(
    conn: &mut PgConnection,
    sql: &PgRelaySql,
    rows: Vec<PgOutboxRow>,
) -> Result<Vec<OutboxRow>, Error> {
    let mut wanted: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
    for r in &rows {
        *wanted.entry(r.shard).or_default() += i64::from(r.relay_seq.is_none());
    }
    let (shards, counts): (Vec<i32>, Vec<i64>) = wanted.iter().map(|(s, k)| (*s, *k)).unzip();
    let got: Vec<(i32, Uuid, i64)> = sqlx::query_as(COUNTERS_SQL)
        .bind(&sql.table)
        .bind(&shards)
        .bind(&counts)
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::db("take relay sequence numbers"))?;
    // Per shard: its source and the next number to give.
    let mut next: std::collections::HashMap<i32, (String, i64)> = got
        .into_iter()
        .map(|(shard, source, last)| (shard, (format!("{source}/{shard}"), last - wanted[&shard] + 1)))
        .collect();
    let (mut ids, mut numbers) = (Vec::new(), Vec::new());
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let (source, n) = next.get_mut(&r.shard).ok_or_else(|| Error::Database {
            operation: "take relay sequence numbers",
            source: sqlx::Error::RowNotFound,
        })?;
        let number = match r.relay_seq {
            Some(kept) => kept,
            None => {
                ids.push(r.id);
                numbers.push(*n);
                *n += 1;
                *n - 1
            }
        };
        let sequence = Some(format!("{source}:{number}"));
        out.push(OutboxRow { sequence, ..r.columns.with_id(r.seq, r.id) });
    }
    if !ids.is_empty() {
        sqlx::query(&sql.number)
            .bind(&ids)
            .bind(&numbers)
            .execute(&mut *conn)
            .await
            .map_err(Error::db("number outbox rows"))?;
    }
    Ok(out)
}

/// Takes the two-key advisory lock `(table OID, n)` with `lock_sql` ([`TRY_LOCK2_SQL`]
/// or [`TRY_LOCK2_SHARED_SQL`]); whether it was granted.
async fn try_lock2(conn: &mut PgConnection, lock_sql: &str, table: &str, n: i64) -> Result<bool, Error> {
    sqlx::query_scalar(lock_sql).bind(table).bind(n as i32).fetch_one(conn).await.map_err(Error::db("take relay lock"))
}

/// The shards member `slot` owns when `members` (ascending slots) are alive: shard `s`
/// belongs to the member whose rank is `s % members.len()`.
pub(crate) fn owned_shards(shards: u32, members: &[i64], slot: i64) -> Vec<u32> {
    let Some(rank) = members.iter().position(|m| *m == slot) else { return Vec::new() };
    (0..shards).filter(|s| *s as usize % members.len() == rank).collect()
}

#[cfg(test)]
mod tests {
    use super::owned_shards;

    #[test]
    fn shards_are_split_by_rank_and_cover_every_shard_once() {
        let members = [0, 3, 7];
        let all: Vec<Vec<u32>> = members.iter().map(|m| owned_shards(8, &members, *m)).collect();
        assert_eq!(all, vec![vec![0, 3, 6], vec![1, 4, 7], vec![2, 5]]);
        // A member that is not (yet) in the list owns nothing.
        assert!(owned_shards(8, &members, 5).is_empty());
        // One member owns all.
        assert_eq!(owned_shards(4, &[2], 2), vec![0, 1, 2, 3]);
    }
}
