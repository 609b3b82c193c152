//! Database backends: [`Postgres`] for production, [`Sqlite`] as the embedded default.
//!
//! Every database-facing type is generic over its backend (`Outbox`, `OutboxRelay<DB>`,
//! `ListenerContainer<DB>`, `HandlerContext<DB>`, `DeadLetterRedriver<DB>`), with
//! PostgreSQL as the default type argument. Pick the backend at run time from the URL
//! with [`AnyPool::connect`].
//!
//! What differs between the two:
//!
//! | | PostgreSQL | SQLite |
//! |---|---|---|
//! | several relay instances | one publishes at a time (advisory lock on the table's OID) | one process per database file (SQLite has one writer) |
//! | relay wake-up | `LISTEN rk_outbox` + `poll_interval` | `poll_interval` |
//! | handler transactions | concurrent | serialized: `BEGIN IMMEDIATE` takes the write lock for the handler's whole run |
//! | a handler that swallows a failed statement | detected (`SELECT 1` probe, SQLSTATE 25P02) | nothing to detect: SQLite keeps the transaction usable |
//! | timestamps | `timestamptz` | RFC 3339 text in UTC (`2026-11-23T06:43:12.123Z`) |
//! | message ids | `uuid` | hyphenated lowercase text |
//! | re-driver lock | session advisory lock | per process |

mod postgres;
mod sqlite;

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Pool, Transaction};
use uuid::Uuid;

pub use sqlx::{Postgres, Sqlite};

use crate::Error;

/// A database the framework's tables can live in: [`Postgres`] or [`Sqlite`].
///
/// Sealed: the framework's SQL is written for these two.
pub trait Backend: sqlx::Database<Connection: BackendConnection<Backend = Self>> + sealed::Sealed {}

/// Something that gives a connection of a [`Backend`]: `PgConnection`,
/// `SqliteConnection`, a `sqlx::Transaction` or a pooled connection of either. Lets
/// [`crate::Outbox::enqueue`] take `&mut tx` as well as `ctx.tx()`.
pub trait BackendConnection: Send {
    /// The backend.
    type Backend: Backend;
    /// The underlying connection.
    fn connection(&mut self) -> &mut <Self::Backend as sqlx::Database>::Connection;
}

impl BackendConnection for sqlx::PgConnection {
    type Backend = Postgres;
    fn connection(&mut self) -> &mut sqlx::PgConnection {
        self
    }
}

impl BackendConnection for sqlx::SqliteConnection {
    type Backend = Sqlite;
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

impl Backend for Postgres {}
impl Backend for Sqlite {}

/// A pool of either backend, chosen by the URL scheme: `postgres://` or `postgresql://`
/// for PostgreSQL, `sqlite:` for SQLite.
#[derive(Debug, Clone)]
pub enum AnyPool {
    /// PostgreSQL.
    Postgres(sqlx::PgPool),
    /// SQLite.
    Sqlite(sqlx::SqlitePool),
}

impl AnyPool {
    /// Connects to `url` with the framework's recommended settings. SQLite: the file is
    /// created if missing, WAL journal, `synchronous=NORMAL`, foreign keys on,
    /// `busy_timeout` 30 s (writers queue instead of failing), 8 connections; an
    /// in-memory URL (`sqlite::memory:`) gets one shared connection. PostgreSQL:
    /// `max_connections` connections (default 10).
    ///
    /// # Errors
    /// [`Error::Config`] naming `DATABASE_URL` for an unknown scheme or a malformed URL;
    /// [`Error::Database`] when connecting fails.
    pub async fn connect(url: &str, max_connections: u32) -> Result<AnyPool, Error> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(max_connections)
                .connect(url)
                .await
                .map_err(Error::db("connect to PostgreSQL"))?;
            Ok(AnyPool::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
            use std::str::FromStr;
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| crate::ConfigError::invalid("DATABASE_URL", format!("not a valid SQLite URL: {e}")))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(30));
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            let pool = SqlitePoolOptions::new()
                .max_connections(if in_memory { 1 } else { max_connections.max(2) })
                // An in-memory database lives as long as its connection.
                .idle_timeout(if in_memory { None } else { Some(Duration::from_secs(600)) })
                .max_lifetime(if in_memory { None } else { Some(Duration::from_secs(1800)) })
                .connect_with(options)
                .await
                .map_err(Error::db("open SQLite database"))?;
            Ok(AnyPool::Sqlite(pool))
        } else {
            let scheme = url.split(':').next().unwrap_or_default();
            Err(crate::ConfigError::invalid(
                "DATABASE_URL",
                format!("unsupported scheme `{scheme}`: use postgres://… or sqlite:…"),
            )
            .into())
        }
    }

    /// `"postgres"` or `"sqlite"`.
    pub fn backend_name(&self) -> &'static str {
        match self {
            AnyPool::Postgres(_) => <Postgres as sealed::Sealed>::NAME,
            AnyPool::Sqlite(_) => <Sqlite as sealed::Sealed>::NAME,
        }
    }
}

/// The outbox insert; the same text on both backends.
fn outbox_insert_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} (id, aggregatetype, aggregateid, type, schema_version, payload, content_type, headers) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    )
}

/// The insert of a parked record; the same text on both backends. Parking twice (after
/// a crash) changes nothing: the record's coordinates and time are unique.
fn park_insert_sql(t: &str) -> String {
    format!(
        "INSERT INTO {t} (dead_letter_topic, dead_letter_partition, dead_letter_offset, message_id, original_topic, \
         original_partition, original_offset, consumer_group, reason, error_message, attempts, redrive_count, \
         record_key, payload, headers, dead_lettered_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
         ON CONFLICT DO NOTHING"
    )
}

/// The instant `age` ago; the earliest representable instant when that is out of range.
pub(crate) fn cutoff(age: Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(age)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// A row for the outbox insert.
pub struct NewOutboxRow<'a> {
    pub id: Uuid,
    pub topic: &'a str,
    pub key: Option<String>,
    pub event_type: &'a str,
    pub schema_version: i32,
    pub payload: Vec<u8>,
    pub content_type: &'a str,
    pub headers: &'a std::collections::BTreeMap<String, String>,
}

/// An undelivered outbox row, as claimed by the relay.
pub struct OutboxRow {
    pub(crate) id: Uuid,
    pub(crate) topic: String,
    pub(crate) key: Option<String>,
    pub(crate) event_type: String,
    pub(crate) schema_version: i32,
    pub(crate) payload: Vec<u8>,
    pub(crate) content_type: String,
    pub(crate) headers: serde_json::Value,
    pub(crate) created_at: DateTime<Utc>,
}

/// The outbox columns besides the id, as both backends store them (the id's type
/// differs: `uuid` on PostgreSQL, text on SQLite).
#[derive(sqlx::FromRow)]
pub(crate) struct OutboxColumns {
    aggregatetype: String,
    aggregateid: Option<String>,
    #[sqlx(rename = "type")]
    event_type: String,
    schema_version: i32,
    payload: Vec<u8>,
    content_type: String,
    headers: sqlx::types::Json<serde_json::Value>,
    created_at: DateTime<Utc>,
}

impl OutboxColumns {
    pub(crate) fn with_id(self, id: Uuid) -> OutboxRow {
        OutboxRow {
            id,
            topic: self.aggregatetype,
            key: self.aggregateid,
            event_type: self.event_type,
            schema_version: self.schema_version,
            payload: self.payload,
            content_type: self.content_type,
            headers: self.headers.0,
            created_at: self.created_at,
        }
    }
}

/// A row whose send failed.
pub struct SendFailure {
    pub(crate) id: Uuid,
    pub(crate) error: String,
    pub(crate) permanent: bool,
}

/// What the relay's publish step returns: delivered ids and failures.
#[derive(Default)]
pub struct Published {
    pub(crate) delivered: Vec<Uuid>,
    pub(crate) failed: Vec<SendFailure>,
}

/// Statements of the relay for one outbox table.
#[derive(Debug, Clone)]
pub struct RelaySql {
    pub(crate) table: String,
    pub(crate) select: String,
    pub(crate) mark: String,
    pub(crate) fail: String,
    pub(crate) cleanup: String,
    /// SQLite: parks a row that cannot be read, by `seq` (PostgreSQL's typed columns
    /// cannot hold such rows).
    pub(crate) park_malformed: String,
}

/// Statements of the idempotent consumer for one deduplication table.
#[derive(Debug, Clone)]
pub struct DedupSql {
    pub(crate) insert: String,
    pub(crate) insert_batch: String,
    pub(crate) prune: String,
}

/// A dead-letter record to park.
pub struct ParkRow<'a> {
    pub(crate) dead_letter_topic: &'a str,
    pub(crate) dead_letter_partition: i32,
    pub(crate) dead_letter_offset: i64,
    pub(crate) message_id: Option<String>,
    pub(crate) original_topic: Option<String>,
    pub(crate) original_partition: Option<i32>,
    pub(crate) original_offset: Option<i64>,
    pub(crate) consumer_group: Option<String>,
    pub(crate) reason: String,
    pub(crate) error_message: Option<String>,
    pub(crate) attempts: Option<i32>,
    pub(crate) redrive_count: i32,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) payload: Option<&'a [u8]>,
    pub(crate) headers: serde_json::Value,
    pub(crate) dead_lettered_at: Option<DateTime<Utc>>,
}

/// A named lock held for a re-drive run; release it with [`NamedLock::release`].
pub enum NamedLock {
    /// A PostgreSQL session advisory lock on a pooled connection.
    Postgres(sqlx::pool::PoolConnection<Postgres>, String),
    /// A lock within this process.
    Local(LocalLock),
}

/// A lock on a name within this process, released when dropped.
pub struct LocalLock(String);

impl LocalLock {
    /// Takes the lock `name`; `None` when this process holds it already.
    pub(crate) fn try_take(name: &str) -> Option<LocalLock> {
        let mut held = LOCAL_LOCKS.lock().unwrap_or_else(|p| p.into_inner());
        if held.iter().any(|n| n == name) {
            return None;
        }
        held.push(name.to_owned());
        Some(LocalLock(name.to_owned()))
    }
}

impl Drop for LocalLock {
    fn drop(&mut self) {
        LOCAL_LOCKS.lock().unwrap_or_else(|p| p.into_inner()).retain(|n| *n != self.0);
    }
}

static LOCAL_LOCKS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl NamedLock {
    fn try_local(name: &str) -> Option<NamedLock> {
        LocalLock::try_take(name).map(NamedLock::Local)
    }

    /// Releases the lock. A PostgreSQL connection whose unlock fails is closed rather
    /// than returned to the pool still holding the lock.
    pub(crate) async fn release(self) {
        match self {
            NamedLock::Postgres(mut conn, name) => {
                if let Err(e) = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                    .bind(&name)
                    .execute(&mut *conn)
                    .await
                {
                    tracing::warn!(error = %e, "advisory unlock failed; closing the connection");
                    let _ = conn.detach();
                }
            }
            NamedLock::Local(lock) => drop(lock),
        }
    }
}

pub(crate) mod sealed {
    use super::*;

    /// The SQL of one backend. Not implementable outside the crate.
    pub trait Sealed: sqlx::Database + Sized {
        /// `"postgres"` or `"sqlite"`.
        const NAME: &'static str;

        /// The crate's migrations for this backend.
        fn migrations() -> &'static sqlx::migrate::Migrator;

        /// Runs `migrator` on `pool`.
        fn run_migrator<'a>(
            migrator: &'a sqlx::migrate::Migrator,
            pool: &'a Pool<Self>,
        ) -> impl Future<Output = Result<(), sqlx::migrate::MigrateError>> + Send + 'a;

        /// Begins a transaction that will write. SQLite takes the write lock at once
        /// (`BEGIN IMMEDIATE`), so that concurrent writers wait (busy timeout) instead
        /// of failing when a reading transaction upgrades.
        fn begin_write(
            pool: &Pool<Self>,
        ) -> impl Future<Output = Result<Transaction<'static, Self>, sqlx::Error>> + Send + '_;

        fn outbox_insert_sql(table: &str) -> String;
        fn insert_outbox<'a>(
            conn: &'a mut Self::Connection,
            sql: &'a str,
            row: NewOutboxRow<'a>,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

        fn relay_sql(table: &str, delete_on_delivery: bool) -> RelaySql;
        /// Claims up to `limit` rows, publishes them with `publish` and records the
        /// outcome; `Ok(None)` when another instance holds the relay lock.
        fn relay_batch<'a, F, Fut>(
            pool: &'a Pool<Self>,
            sql: &'a RelaySql,
            limit: i64,
            max_attempts: i32,
            publish: F,
        ) -> impl Future<Output = Result<Option<Published>, Error>> + Send + 'a
        where
            F: FnOnce(Vec<OutboxRow>) -> Fut + Send + 'a,
            Fut: Future<Output = Published> + Send + 'a;
        fn cleanup_outbox<'a>(
            pool: &'a Pool<Self>,
            sql: &'a RelaySql,
            older_than: DateTime<Utc>,
        ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;
        /// A LISTEN connection for the outbox notifications, if the backend has them.
        fn outbox_listener(pool: &Pool<Self>) -> impl Future<Output = Option<sqlx::postgres::PgListener>> + Send + '_;

        fn dedup_sql(table: &str) -> DedupSql;
        /// Inserts the deduplication row; the number of rows inserted (0: duplicate).
        fn insert_dedup<'a>(
            conn: &'a mut Self::Connection,
            sql: &'a DedupSql,
            group: &'a str,
            message_id: Uuid,
        ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;
        /// Inserts the deduplication rows of `message_ids`; returns those inserted (not
        /// processed before).
        fn insert_dedup_batch<'a>(
            conn: &'a mut Self::Connection,
            sql: &'a DedupSql,
            group: &'a str,
            message_ids: &'a [Uuid],
        ) -> impl Future<Output = Result<std::collections::HashSet<Uuid>, sqlx::Error>> + Send + 'a;
        /// Whether a handler left the transaction unusable (PostgreSQL: a failed
        /// statement aborted it, and COMMIT would silently roll back).
        fn check_transaction<'a>(
            conn: &'a mut Self::Connection,
        ) -> impl Future<Output = Result<TransactionState, sqlx::Error>> + Send + 'a;
        fn prune_dedup<'a>(
            pool: &'a Pool<Self>,
            sql: &'a DedupSql,
            group: &'a str,
            older_than: DateTime<Utc>,
        ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;

        fn park_sql(table: &str) -> String;
        fn park<'a>(
            pool: &'a Pool<Self>,
            sql: &'a str,
            row: ParkRow<'a>,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;
        /// Takes the lock `name` without waiting; `None` when it is held elsewhere.
        fn try_lock<'a>(
            pool: &'a Pool<Self>,
            name: &'a str,
        ) -> impl Future<Output = Result<Option<NamedLock>, sqlx::Error>> + Send + 'a;
    }
}

/// State of a handler's transaction before commit.
pub enum TransactionState {
    /// Commit will commit.
    Open,
    /// A statement failed and the database aborted the transaction.
    Aborted,
}
