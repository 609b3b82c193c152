//! One domain code on two databases: PostgreSQL (production) and SQLite (the embedded
//! default, chosen when `DATABASE_URL` is unset or starts with `sqlite:`).
//!
//! Queries go through [`sql!`](crate::sql), which runs the same sqlx builder on
//! whichever backend an [`Ex`] holds. Most statements are portable; where the dialects
//! differ a [`Sql`] carries one text per backend.

use reliable_kafka::{Backend, Operations, Outbox, OutboxBacklog, ParkedMessage, Postgres, Sqlite};
use sqlx::{PgConnection, PgPool, SqliteConnection, SqlitePool, Transaction};

/// The application's database.
#[derive(Debug, Clone)]
pub enum Db {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

impl From<reliable_kafka::AnyPool> for Db {
    fn from(p: reliable_kafka::AnyPool) -> Self {
        match p {
            reliable_kafka::AnyPool::Postgres(p) => Db::Postgres(p),
            reliable_kafka::AnyPool::Sqlite(p) => Db::Sqlite(p),
            other => unreachable!("the application enables only PostgreSQL and SQLite, not {}", other.backend_name()),
        }
    }
}

impl From<PgPool> for Db {
    fn from(p: PgPool) -> Self {
        Db::Postgres(p)
    }
}

impl Db {
    /// Connects to `url` (`postgres://…` or `sqlite:…`) with up to `max_connections`.
    ///
    /// # Errors
    /// An unsupported scheme or a failed connection.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, reliable_kafka::Error> {
        reliable_kafka::AnyPool::connect(url, max_connections).await.map(Db::from)
    }

    /// `"postgres"` or `"sqlite"`.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }

    /// Begins a transaction that will write, as the library's own do
    /// ([`reliable_kafka::begin_write`]; SQLite: `BEGIN IMMEDIATE`, so that concurrent
    /// writers queue instead of failing on a lock upgrade).
    ///
    /// # Errors
    /// Database errors.
    pub async fn begin(&self) -> Result<Tx, reliable_kafka::Error> {
        Ok(match self {
            Db::Postgres(p) => Tx::Postgres(reliable_kafka::begin_write(p).await?),
            Db::Sqlite(p) => Tx::Sqlite(reliable_kafka::begin_write(p).await?),
        })
    }

    /// The outbox backlog ([`Operations::outbox_backlog`]): rows pending, the age of the
    /// oldest, rows the relay parked, rows delivered and kept.
    ///
    /// # Errors
    /// Database errors.
    pub async fn outbox_backlog(&self) -> Result<OutboxBacklog, reliable_kafka::Error> {
        match self {
            Db::Postgres(p) => Operations::new(p.clone()).outbox_backlog().await,
            Db::Sqlite(p) => Operations::new(p.clone()).outbox_backlog().await,
        }
    }

    /// Every parked message (`rk_parked_messages`, [`Operations::parked_messages`]),
    /// newest first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn parked_messages(&self) -> Result<Vec<ParkedMessage>, reliable_kafka::Error> {
        match self {
            Db::Postgres(p) => all_parked(&Operations::new(p.clone())).await,
            Db::Sqlite(p) => all_parked(&Operations::new(p.clone())).await,
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Db::Postgres(p) => p.close().await,
            Db::Sqlite(p) => p.close().await,
        }
    }
}

/// Every parked message: the count, with room for messages parked meanwhile; asked
/// again with twice the room while the answer fills it.
async fn all_parked<DB: Backend>(ops: &Operations<DB>) -> Result<Vec<ParkedMessage>, reliable_kafka::Error> {
    let mut limit = usize::try_from(ops.parked_count().await?).unwrap_or(usize::MAX / 4).saturating_add(64);
    loop {
        let parked = ops.parked_messages(limit).await?;
        if parked.len() < limit {
            return Ok(parked);
        }
        limit = limit.saturating_mul(2);
    }
}

/// An open transaction of either backend.
#[derive(Debug)]
pub enum Tx {
    /// PostgreSQL.
    Postgres(Transaction<'static, Postgres>),
    /// SQLite.
    Sqlite(Transaction<'static, Sqlite>),
}

impl Tx {
    /// Commits.
    ///
    /// # Errors
    /// Database errors (the transaction is then rolled back).
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(t) => t.commit().await,
            Tx::Sqlite(t) => t.commit().await,
        }
    }

    /// The transaction as an executor.
    pub fn ex(&mut self) -> Ex<'_> {
        Ex::from(self)
    }
}

/// Where a statement runs: a pool or a connection (inside a transaction) of either
/// backend.
#[derive(Debug)]
pub enum Ex<'a> {
    /// A PostgreSQL pool.
    PgPool(&'a PgPool),
    /// A PostgreSQL connection.
    Pg(&'a mut PgConnection),
    /// An SQLite pool.
    SqlitePool(&'a SqlitePool),
    /// An SQLite connection.
    Sqlite(&'a mut SqliteConnection),
}

impl<'a> From<&'a Db> for Ex<'a> {
    fn from(db: &'a Db) -> Self {
        match db {
            Db::Postgres(p) => Ex::PgPool(p),
            Db::Sqlite(p) => Ex::SqlitePool(p),
        }
    }
}

impl<'a> From<&'a mut Tx> for Ex<'a> {
    fn from(tx: &'a mut Tx) -> Self {
        match tx {
            Tx::Postgres(t) => Ex::Pg(t),
            Tx::Sqlite(t) => Ex::Sqlite(t),
        }
    }
}

impl Ex<'_> {
    /// Enqueues `event` in the outbox on this connection (in its transaction).
    ///
    /// # Errors
    /// As [`Outbox::enqueue`]; on a pool, an `InvalidValue` error (events are only
    /// enqueued inside transactions).
    pub async fn enqueue<E: reliable_kafka::Event>(
        &mut self,
        outbox: &Outbox,
        event: &E,
    ) -> Result<uuid::Uuid, reliable_kafka::Error> {
        match self {
            Ex::Pg(c) => outbox.enqueue(&mut **c, event).await,
            Ex::Sqlite(c) => outbox.enqueue(&mut **c, event).await,
            Ex::PgPool(_) | Ex::SqlitePool(_) => Err(reliable_kafka::ConfigError::InvalidValue {
                key: "outbox".into(),
                reason: "events are enqueued inside a transaction, not on a pool".into(),
            }
            .into()),
        }
    }

    /// Reborrows, so that one `Ex` can run several statements.
    pub fn re(&mut self) -> Ex<'_> {
        match self {
            Ex::PgPool(p) => Ex::PgPool(p),
            Ex::Pg(c) => Ex::Pg(c),
            Ex::SqlitePool(p) => Ex::SqlitePool(p),
            Ex::Sqlite(c) => Ex::Sqlite(c),
        }
    }
}

/// A backend the application runs on: turns a handler's transaction into an [`Ex`].
pub trait AppBackend: Backend {
    /// The handler transaction's connection as an executor.
    fn ex(conn: &mut Self::Connection) -> Ex<'_>;
}

impl AppBackend for Postgres {
    fn ex(conn: &mut PgConnection) -> Ex<'_> {
        Ex::Pg(conn)
    }
}

impl AppBackend for Sqlite {
    fn ex(conn: &mut SqliteConnection) -> Ex<'_> {
        Ex::Sqlite(conn)
    }
}

/// Statement text: the same for both backends, or one per backend.
#[derive(Debug, Clone, Copy)]
pub struct Sql<'a> {
    /// PostgreSQL text.
    pub pg: &'a str,
    /// SQLite text.
    pub lite: &'a str,
}

impl<'a> From<&'a str> for Sql<'a> {
    fn from(s: &'a str) -> Self {
        Sql { pg: s, lite: s }
    }
}

impl<'a> From<&'a String> for Sql<'a> {
    fn from(s: &'a String) -> Self {
        Sql { pg: s, lite: s }
    }
}

impl<'a> From<(&'a str, &'a str)> for Sql<'a> {
    fn from((pg, lite): (&'a str, &'a str)) -> Self {
        Sql { pg, lite }
    }
}

/// The current time as SQL, per backend: `now()` / RFC 3339 text in UTC.
pub const NOW_LITE: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// Runs one sqlx statement on an [`Ex`] (or anything that converts into one: `&Db`,
/// `&mut Tx`):
///
/// `sql!(ex, query_scalar("SELECT … WHERE id = $1").bind(id).fetch_one())`
///
/// `query(..) … .execute()` returns the number of rows affected. The statement text is
/// anything that converts into a [`Sql`]: `"…"` for both backends, or
/// `("postgres …", "sqlite …")`.
#[macro_export]
macro_rules! sql {
    ($ex:expr, $kind:ident ($sql:expr) $($rest:tt)*) => {
        $crate::sql!(@binds $ex, $kind, $sql, [] $($rest)*)
    };
    (@binds $ex:expr, $kind:ident, $sql:expr, [$($b:expr),*] .bind($x:expr) $($rest:tt)*) => {
        $crate::sql!(@binds $ex, $kind, $sql, [$($b,)* $x] $($rest)*)
    };
    (@binds $ex:expr, query, $sql:expr, [$($b:expr),*] .execute()) => {{
        let __sql = $crate::db::Sql::from($sql);
        match $crate::db::Ex::from($ex) {
            $crate::db::Ex::PgPool(e) => sqlx::query(__sql.pg)$(.bind($b))*.execute(e).await.map(|r| r.rows_affected()),
            $crate::db::Ex::Pg(e) => sqlx::query(__sql.pg)$(.bind($b))*.execute(e).await.map(|r| r.rows_affected()),
            $crate::db::Ex::SqlitePool(e) => {
                sqlx::query(__sql.lite)$(.bind($b))*.execute(e).await.map(|r| r.rows_affected())
            }
            $crate::db::Ex::Sqlite(e) => sqlx::query(__sql.lite)$(.bind($b))*.execute(e).await.map(|r| r.rows_affected()),
        }
    }};
    (@binds $ex:expr, $kind:ident, $sql:expr, [$($b:expr),*] .$exec:ident()) => {{
        let __sql = $crate::db::Sql::from($sql);
        match $crate::db::Ex::from($ex) {
            $crate::db::Ex::PgPool(e) => sqlx::$kind(__sql.pg)$(.bind($b))*.$exec(e).await,
            $crate::db::Ex::Pg(e) => sqlx::$kind(__sql.pg)$(.bind($b))*.$exec(e).await,
            $crate::db::Ex::SqlitePool(e) => sqlx::$kind(__sql.lite)$(.bind($b))*.$exec(e).await,
            $crate::db::Ex::Sqlite(e) => sqlx::$kind(__sql.lite)$(.bind($b))*.$exec(e).await,
        }
    }};
}
