//! [`ShardLease`]: work split into numbered shards among the live instances of a
//! service, on PostgreSQL session advisory locks — the sharded relay's scheme, for a
//! service's own jobs (seed 004's recovery scheduler scaled by partitioning).

use sqlx::{PgConnection, PgPool};

use super::postgres_outbox::owned_shards;
use crate::{ConfigError, Error};

/// Member slots are lock `(key, MEMBER_BASE + slot)`, shard `s` is lock `(key, s)`.
const MEMBER_BASE: i64 = 1_000_000;
/// Member slots tried before joining gives up.
const MAX_MEMBERS: i64 = 4096;
/// Most shards of one lease name.
pub const MAX_LEASE_SHARDS: u32 = 1024;

const TRY_LOCK_SQL: &str = "SELECT pg_try_advisory_lock($1::int4, $2::int4)";
const UNLOCK_SQL: &str = "SELECT pg_advisory_unlock($1::int4, $2::int4)";
const MEMBERS_SQL: &str = "SELECT objid::int8 - 1000000 FROM pg_locks \
     WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid::int8 = $1 \
     AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND objid::int8 >= 1000000 AND objid::int8 < 2000000 ORDER BY 1";

/// One instance's share of `shards` numbered shards of the work named `name`: each
/// live instance holds a member slot and the shards whose number modulo the count of
/// live members is its rank, each shard a session advisory lock, so no two instances
/// own a shard at once. An instance that dies (its database session ends) loses its
/// locks, and the others take its shards at their next [`ShardLease::rebalance`]; an
/// instance that joins gets its share as the others rebalance and let go.
///
/// The lease lives on one dedicated connection taken from the pool (through its
/// `after_connect`) and not counted in it. Rebalance before each run of the work and
/// process only the shards [`ShardLease::shards`] returns; a shard changes hands only
/// between two rebalances, so work done between them belongs to one owner. Locks are
/// keyed by a 32-bit FNV-1a hash of `name` with the shard number, in the two-key
/// form of `pg_try_advisory_lock`; another lock of the same database with that hash
/// as its first key would collide, so keep names distinct from other advisory-lock
/// users' keys.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), reliable_kafka::Error> {
/// let mut lease = reliable_kafka::ShardLease::join(&pool, "payment-recovery", 6).await?;
/// let mine = lease.rebalance().await?.to_vec(); // e.g. [0, 3] of 6 with 3 instances
/// // ... recover the payments whose `id % 6` is in `mine` ...
/// lease.leave().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ShardLease {
    conn: PgConnection,
    name: String,
    key: i32,
    shards: u32,
    slot: i64,
    held: Vec<u32>,
}

impl ShardLease {
    /// Joins the instances sharing `name`'s `shards` shards (1..=[`MAX_LEASE_SHARDS`])
    /// and takes this instance's share.
    ///
    /// # Errors
    /// [`Error::Config`] naming `shards` when out of range or when every one of the
    /// 4,096 member slots is taken; [`Error::Database`] when the connection or a lock
    /// statement fails.
    pub async fn join(pool: &PgPool, name: &str, shards: u32) -> Result<ShardLease, Error> {
        if !(1..=MAX_LEASE_SHARDS).contains(&shards) {
            return Err(ConfigError::invalid("shards", format!("must be within 1..={MAX_LEASE_SHARDS}")).into());
        }
        let mut conn = pool.acquire().await.map_err(Error::db("open shard lease session"))?.detach();
        let key = lease_key(name);
        for slot in 0..MAX_MEMBERS {
            if try_lock(&mut conn, key, MEMBER_BASE + slot).await? {
                let mut lease = ShardLease { conn, name: name.to_owned(), key, shards, slot, held: Vec::new() };
                lease.rebalance().await?;
                return Ok(lease);
            }
        }
        Err(ConfigError::invalid("shards", format!("all {MAX_MEMBERS} member slots of lease `{name}` are taken"))
            .into())
    }

    /// Looks at the live members, lets go of the shards no longer this instance's and
    /// takes those that are and are free (a shard its previous owner still holds is
    /// taken at a later rebalance); returns the shards held now, ascending.
    ///
    /// # Errors
    /// [`Error::Database`] when a statement fails (the session may be gone: join again).
    pub async fn rebalance(&mut self) -> Result<&[u32], Error> {
        let members: Vec<i64> = sqlx::query_scalar(MEMBERS_SQL)
            .bind(i64::from(self.key as u32))
            .fetch_all(&mut self.conn)
            .await
            .map_err(Error::db("list shard lease members"))?;
        let wanted = owned_shards(self.shards, &members, self.slot);
        for s in self.held.clone() {
            if !wanted.contains(&s) {
                sqlx::query(UNLOCK_SQL)
                    .bind(self.key)
                    .bind(s as i32)
                    .execute(&mut self.conn)
                    .await
                    .map_err(Error::db("release lease shard"))?;
                self.held.retain(|h| *h != s);
                tracing::info!(lease = %self.name, shard = s, "lease shard released");
            }
        }
        for s in wanted {
            if !self.held.contains(&s) && try_lock(&mut self.conn, self.key, i64::from(s)).await? {
                self.held.push(s);
                tracing::info!(lease = %self.name, shard = s, "lease shard taken");
            }
        }
        self.held.sort_unstable();
        Ok(&self.held)
    }

    /// The shards held since the last [`ShardLease::rebalance`], ascending.
    pub fn shards(&self) -> &[u32] {
        &self.held
    }

    /// The shard count.
    pub fn shard_count(&self) -> u32 {
        self.shards
    }

    /// Leaves: closes the session, which releases every lock, so the others take the
    /// shards at their next rebalance. Dropping the lease does the same less politely.
    pub async fn leave(self) {
        use sqlx::Connection;
        if let Err(e) = self.conn.close().await {
            tracing::debug!(error = %e, "shard lease session closed uncleanly");
        }
    }
}

async fn try_lock(conn: &mut PgConnection, key: i32, n: i64) -> Result<bool, Error> {
    sqlx::query_scalar(TRY_LOCK_SQL)
        .bind(key)
        .bind(n as i32)
        .fetch_one(conn)
        .await
        .map_err(Error::db("take lease lock"))
}

/// 32-bit FNV-1a of `name`, as the first key of the lease's advisory locks.
fn lease_key(name: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h as i32
}

#[cfg(test)]
mod tests {
    #[test]
    fn lease_keys_are_fnv1a_and_stable() {
        // FNV-1a 32 of "" and "a" (the published test vectors).
        assert_eq!(super::lease_key("") as u32, 0x811c_9dc5);
        assert_eq!(super::lease_key("a") as u32, 0xe40c_292c);
    }
}
