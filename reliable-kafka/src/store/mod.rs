//! Database backends: [`Postgres`] for production (feature `postgres`), [`MySql`] for
//! services on MySQL or MariaDB (feature `mysql`), [`Sqlite`] as the embedded default
//! (feature `sqlite`).
//!
//! Every database-facing type is generic over its backend (`OutboxRelay<DB>`,
//! `ListenerContainer<DB>`, `HandlerContext<DB>`, `DeadLetterRedriver<DB>`,
//! `Operations<DB>`), with [`DefaultBackend`] as the default type argument. Pick the
//! backend at run time from the URL with [`AnyPool::connect`].
//!
//! What a backend does is split by concern, one trait each: the outbox and its relay
//! (`outbox.rs`; PostgreSQL's in `postgres_outbox.rs`), the deduplication table (`dedup.rs`), parked records (`park.rs`), the
//! key-blocking table (`blocked.rs`),
//! named locks (`lock.rs`) and shard leases for a service's own jobs (`shard_lease.rs`); SQL the dialects share is in `sql.rs`
//! (MySQL's own in `mysql.rs` and `mysql_outbox.rs`).
//!
//! What differs between them:
//!
//! | | PostgreSQL | MySQL / MariaDB | SQLite |
//! |---|---|---|---|
//! | several relay instances | one publishes at a time (session advisory lock on the table's OID), or each its shards | one publishes at a time (`GET_LOCK` on the database and table, held by the relay's session) | one process per database file (SQLite has one writer) |
//! | relay wake-up | `LISTEN rk_outbox` + `poll_interval` | `poll_interval` | `poll_interval` |
//! | handler transactions | concurrent | concurrent (InnoDB row locks) | serialized: `BEGIN IMMEDIATE` takes the write lock for the handler's whole run |
//! | a handler that swallows a failed statement | detected (`SELECT 1` probe, SQLSTATE 25P02) | a failed statement rolls back only itself; a deadlock rolls back the transaction, detected on MariaDB (`@@in_transaction`) | detected when SQLite rolled the transaction back (after `SQLITE_FULL`, an I/O error); otherwise SQLite keeps the transaction usable |
//! | timestamps | `timestamptz` | `DATETIME(6)` in UTC | RFC 3339 text in UTC (`2026-11-23T06:43:12.123Z`) |
//! | message ids | `uuid` | hyphenated lowercase text (`CHAR(36)`) | hyphenated lowercase text |
//! | re-driver lock | session advisory lock | `GET_LOCK` | per process |

#[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
compile_error!("reliable-kafka needs a database backend: enable the `postgres`, `mysql` or `sqlite` feature");

mod any_pool;
pub(crate) mod blocked;
pub(crate) mod dedup;
pub(crate) mod lock;
#[cfg(feature = "mysql")]
pub(crate) mod mysql;
#[cfg(feature = "mysql")]
mod mysql_outbox;
pub(crate) mod ops;
pub(crate) mod outbox;
pub(crate) mod park;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
mod postgres_outbox;
#[cfg(feature = "postgres")]
mod shard_lease;
pub(crate) mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Pool, Transaction};

pub use any_pool::AnyPool;
#[cfg(feature = "sqlite")]
pub use any_pool::SQLITE_BUSY_TIMEOUT;
#[cfg(feature = "postgres")]
pub use shard_lease::{ShardLease, MAX_LEASE_SHARDS};
#[cfg(feature = "mysql")]
pub use sqlx::MySql;
#[cfg(feature = "postgres")]
pub use sqlx::Postgres;
#[cfg(feature = "sqlite")]
pub use sqlx::Sqlite;

use crate::Error;

/// The backend a type means when its backend argument is left out (`HandlerContext`,
/// `ListenerContainer`, …): [`Postgres`] when the `postgres` feature is on, else
/// [`Sqlite`].
#[cfg(feature = "postgres")]
pub type DefaultBackend = sqlx::Postgres;
/// The backend a type means when its backend argument is left out (`HandlerContext`,
/// `ListenerContainer`, …): [`Postgres`] when the `postgres` feature is on, else
/// [`MySql`] when `mysql` is, else [`Sqlite`].
#[cfg(all(not(feature = "postgres"), feature = "mysql"))]
pub type DefaultBackend = sqlx::MySql;
/// The backend a type means when its backend argument is left out (`HandlerContext`,
/// `ListenerContainer`, …): [`Postgres`] when the `postgres` feature is on, else
/// [`MySql`] when `mysql` is, else [`Sqlite`].
#[cfg(all(not(feature = "postgres"), not(feature = "mysql"), feature = "sqlite"))]
pub type DefaultBackend = sqlx::Sqlite;

/// A database the framework's tables can live in: [`Postgres`], [`MySql`] (MySQL 8.0.13+
/// or MariaDB 10.6+) or [`Sqlite`].
///
/// Sealed: the framework's SQL is written for these three. Its supertraits (outbox,
/// deduplication, parking, locks, transactions) are the crate's own.
pub trait Backend:
    sqlx::Database<Connection: BackendConnection<Backend = Self>>
    + Transactions
    + outbox::OutboxStore
    + dedup::DedupStore
    + park::ParkStore
    + blocked::BlockedStore
    + lock::LockStore
    + ops::OpsStore
{
}

#[cfg(feature = "postgres")]
impl Backend for sqlx::Postgres {}
#[cfg(feature = "mysql")]
impl Backend for sqlx::MySql {}
#[cfg(feature = "sqlite")]
impl Backend for sqlx::Sqlite {}

/// Something that gives a connection of a [`Backend`]: `PgConnection`,
/// `MySqlConnection`, `SqliteConnection`, a `sqlx::Transaction` or a pooled connection
/// of one. Lets
/// [`crate::Outbox::enqueue`] take `&mut tx` as well as `ctx.tx()`.
pub trait BackendConnection: Send {
    /// The backend.
    type Backend: Backend;
    /// The underlying connection.
    fn connection(&mut self) -> &mut <Self::Backend as sqlx::Database>::Connection;
}

#[cfg(feature = "postgres")]
impl BackendConnection for sqlx::PgConnection {
    type Backend = sqlx::Postgres;
    fn connection(&mut self) -> &mut sqlx::PgConnection {
        self
    }
}

#[cfg(feature = "mysql")]
impl BackendConnection for sqlx::MySqlConnection {
    type Backend = sqlx::MySql;
    fn connection(&mut self) -> &mut sqlx::MySqlConnection {
        self
    }
}

#[cfg(feature = "sqlite")]
impl BackendConnection for sqlx::SqliteConnection {
    type Backend = sqlx::Sqlite;
    fn connection(&mut self) -> &mut sqlx::SqliteConnection {
        self
    }
}

impl<DB: Backend> BackendConnection for Transaction<'_, DB> {
    type Backend = DB;
    fn connection(&mut self) -> &mut DB::Connection {
        self
    }
}

impl<DB: Backend> BackendConnection for sqlx::pool::PoolConnection<DB> {
    type Backend = DB;
    fn connection(&mut self) -> &mut DB::Connection {
        self
    }
}

/// Begins a transaction that will write, as the framework's own transactions do:
/// SQLite takes the write lock at once (`BEGIN IMMEDIATE`), so that concurrent writers
/// queue (busy timeout) instead of failing when a reading transaction upgrades;
/// PostgreSQL runs a plain `BEGIN`.
///
/// # Errors
/// [`Error::Database`] when the pool or the database refuses.
pub async fn begin_write<DB: Backend>(pool: &Pool<DB>) -> Result<Transaction<'static, DB>, Error> {
    DB::begin_write(pool).await.map_err(Error::db("begin transaction"))
}

/// State of a handler's transaction before commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionState {
    /// Commit will commit.
    Open,
    /// A statement failed and the database aborted the transaction (PostgreSQL), or
    /// the database rolled it back on its own (SQLite after `SQLITE_FULL` or an I/O
    /// error): commit would not commit the handler's work.
    Aborted,
}

/// Transactions and migrations of a backend. Not implementable outside the crate.
pub trait Transactions: sqlx::Database + Sized {
    /// `"postgres"`, `"mysql"` or `"sqlite"`.
    const NAME: &'static str;

    /// The crate's migrations for this backend.
    fn migrations() -> &'static sqlx::migrate::Migrator;

    /// Runs `migrator` on `pool`.
    fn run_migrator<'a>(
        migrator: &'a sqlx::migrate::Migrator,
        pool: &'a Pool<Self>,
    ) -> impl Future<Output = Result<(), sqlx::migrate::MigrateError>> + Send + 'a;

    /// See [`begin_write`].
    fn begin_write(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<Transaction<'static, Self>, sqlx::Error>> + Send + '_;

    /// Whether the handler left the transaction able to commit its work.
    fn check_transaction(
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<TransactionState, sqlx::Error>> + Send + '_;
}

/// The statement as written: PostgreSQL and SQLite run the shared SQL of `sql.rs`
/// unchanged (MySQL translates it: [`mysql::dialect`]).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn same_sql(sql: &str) -> std::borrow::Cow<'_, str> {
    std::borrow::Cow::Borrowed(sql)
}

/// The instant `age` ago; the earliest representable instant when that is out of range.
pub(crate) fn cutoff(age: Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(age)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}
