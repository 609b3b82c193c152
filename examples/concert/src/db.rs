//! One domain code on three databases: PostgreSQL (production), MySQL/MariaDB
//! (`DATABASE_URL=mysql://…`) and SQLite (the embedded default, chosen when
//! `DATABASE_URL` is unset or starts with `sqlite:`).
//!
//! Queries go through [`sql!`](crate::sql), which runs the same sqlx builder on
//! whichever backend an [`Ex`] holds. Most statements are portable; where the dialects
//! differ a [`Sql`] carries one text per backend. MySQL runs the PostgreSQL text
//! translated by [`mysql_text`] (`$n` placeholders bound in their order, `now()`,
//! `ON CONFLICT DO NOTHING`), or a text of its own.

use reliable_kafka::{Backend, MySql, Operations, Outbox, OutboxBacklog, ParkedMessage, Postgres, Sqlite};
use sqlx::{MySqlConnection, MySqlPool, PgConnection, PgPool, SqliteConnection, SqlitePool, Transaction};

/// The application's database.
#[derive(Debug, Clone)]
pub enum Db {
    /// PostgreSQL.
    Postgres(PgPool),
    /// MySQL or MariaDB.
    MySql(MySqlPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

impl From<reliable_kafka::AnyPool> for Db {
    fn from(p: reliable_kafka::AnyPool) -> Self {
        match p {
            reliable_kafka::AnyPool::Postgres(p) => Db::Postgres(p),
            reliable_kafka::AnyPool::MySql(p) => Db::MySql(p),
            reliable_kafka::AnyPool::Sqlite(p) => Db::Sqlite(p),
            other => unreachable!("the application enables PostgreSQL, MySQL and SQLite, not {}", other.backend_name()),
        }
    }
}

impl From<PgPool> for Db {
    fn from(p: PgPool) -> Self {
        Db::Postgres(p)
    }
}

impl Db {
    /// Connects to `url` (`postgres://…`, `mysql://…` or `sqlite:…`) with up to
    /// `max_connections`.
    ///
    /// # Errors
    /// An unsupported scheme or a failed connection.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, reliable_kafka::Error> {
        reliable_kafka::AnyPool::connect(url, max_connections).await.map(Db::from)
    }

    /// `"postgres"`, `"mysql"` or `"sqlite"`.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::MySql(_) => "mysql",
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
            Db::MySql(p) => Tx::MySql(reliable_kafka::begin_write(p).await?),
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
            Db::MySql(p) => Operations::new(p.clone()).outbox_backlog().await,
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
            Db::MySql(p) => all_parked(&Operations::new(p.clone())).await,
            Db::Sqlite(p) => all_parked(&Operations::new(p.clone())).await,
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Db::Postgres(p) => p.close().await,
            Db::MySql(p) => p.close().await,
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

/// An open transaction of one of the backends.
#[derive(Debug)]
pub enum Tx {
    /// PostgreSQL.
    Postgres(Transaction<'static, Postgres>),
    /// MySQL or MariaDB.
    MySql(Transaction<'static, MySql>),
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
            Tx::MySql(t) => t.commit().await,
            Tx::Sqlite(t) => t.commit().await,
        }
    }

    /// The transaction as an executor.
    pub fn ex(&mut self) -> Ex<'_> {
        Ex::from(self)
    }
}

/// Where a statement runs: a pool or a connection (inside a transaction) of one of the
/// backends.
#[derive(Debug)]
pub enum Ex<'a> {
    /// A PostgreSQL pool.
    PgPool(&'a PgPool),
    /// A PostgreSQL connection.
    Pg(&'a mut PgConnection),
    /// A MySQL pool.
    MySqlPool(&'a MySqlPool),
    /// A MySQL connection.
    MySql(&'a mut MySqlConnection),
    /// An SQLite pool.
    SqlitePool(&'a SqlitePool),
    /// An SQLite connection.
    Sqlite(&'a mut SqliteConnection),
}

impl<'a> From<&'a Db> for Ex<'a> {
    fn from(db: &'a Db) -> Self {
        match db {
            Db::Postgres(p) => Ex::PgPool(p),
            Db::MySql(p) => Ex::MySqlPool(p),
            Db::Sqlite(p) => Ex::SqlitePool(p),
        }
    }
}

impl<'a> From<&'a mut Tx> for Ex<'a> {
    fn from(tx: &'a mut Tx) -> Self {
        match tx {
            Tx::Postgres(t) => Ex::Pg(t),
            Tx::MySql(t) => Ex::MySql(t),
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
            Ex::MySql(c) => outbox.enqueue(&mut **c, event).await,
            Ex::Sqlite(c) => outbox.enqueue(&mut **c, event).await,
            Ex::PgPool(_) | Ex::MySqlPool(_) | Ex::SqlitePool(_) => Err(reliable_kafka::ConfigError::InvalidValue {
                key: "outbox".into(),
                reason: "events are enqueued inside a transaction, not on a pool".into(),
            }
            .into()),
        }
    }

    /// Whether this runs on MySQL (no `UPDATE … RETURNING` there).
    pub fn is_mysql(&self) -> bool {
        matches!(self, Ex::MySqlPool(_) | Ex::MySql(_))
    }

    /// Reborrows, so that one `Ex` can run several statements.
    pub fn re(&mut self) -> Ex<'_> {
        match self {
            Ex::PgPool(p) => Ex::PgPool(p),
            Ex::Pg(c) => Ex::Pg(c),
            Ex::MySqlPool(p) => Ex::MySqlPool(p),
            Ex::MySql(c) => Ex::MySql(c),
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

impl AppBackend for MySql {
    fn ex(conn: &mut MySqlConnection) -> Ex<'_> {
        Ex::MySql(conn)
    }
}

impl AppBackend for Sqlite {
    fn ex(conn: &mut SqliteConnection) -> Ex<'_> {
        Ex::Sqlite(conn)
    }
}

/// Statement text: the same for every backend, or one per backend.
#[derive(Debug, Clone, Copy)]
pub struct Sql<'a> {
    /// PostgreSQL text.
    pub pg: &'a str,
    /// SQLite text.
    pub lite: &'a str,
    /// MySQL text (`$n` placeholders, translated by [`mysql_text`]); `None`: the
    /// PostgreSQL text, translated.
    pub my: Option<&'a str>,
}

impl<'a> From<&'a str> for Sql<'a> {
    fn from(s: &'a str) -> Self {
        Sql { pg: s, lite: s, my: None }
    }
}

impl<'a> From<&'a String> for Sql<'a> {
    fn from(s: &'a String) -> Self {
        Sql { pg: s, lite: s, my: None }
    }
}

impl<'a> From<(&'a str, &'a str)> for Sql<'a> {
    fn from((pg, lite): (&'a str, &'a str)) -> Self {
        Sql { pg, lite, my: None }
    }
}

impl<'a> From<(&'a str, &'a str, &'a str)> for Sql<'a> {
    fn from((pg, lite, my): (&'a str, &'a str, &'a str)) -> Self {
        Sql { pg, lite, my: Some(my) }
    }
}

impl Sql<'_> {
    /// The MySQL text and the order its `?` placeholders bind the arguments in.
    pub fn mysql(&self) -> (String, Vec<usize>) {
        mysql_text(self.my.unwrap_or(self.pg))
    }
}

/// A statement written for PostgreSQL in MySQL's dialect: each `$n` becomes `?`, with
/// the argument it binds (`n - 1`) in the returned order (so `$2 … $1 … $2` binds the
/// second argument twice); `now()` and `clock_timestamp()` become `UTC_TIMESTAMP(6)`
/// (sessions and columns are UTC); `ON CONFLICT … DO NOTHING` becomes `INSERT IGNORE`;
/// `FOR UPDATE OF t` becomes `FOR UPDATE`; `CAST(… AS BIGINT)` becomes `AS SIGNED`.
pub fn mysql_text(pg: &str) -> (String, Vec<usize>) {
    let mut out = String::with_capacity(pg.len());
    let mut order = Vec::new();
    let mut chars = pg.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|(_, d)| d.is_ascii_digit()) {
            let mut n = 0usize;
            while let Some((_, d)) = chars.peek().filter(|(_, d)| d.is_ascii_digit()) {
                n = n * 10 + (*d as usize - '0' as usize);
                chars.next();
            }
            order.push(n - 1);
            out.push('?');
        } else {
            out.push(c);
        }
    }
    for (from, to) in
        [("now()", "UTC_TIMESTAMP(6)"), ("clock_timestamp()", "UTC_TIMESTAMP(6)"), (" AS BIGINT)", " AS SIGNED)")]
    {
        out = out.replace(from, to);
    }
    if let Some(at) = out.find(" FOR UPDATE OF ") {
        out.truncate(at + " FOR UPDATE".len());
    }
    if let Some(at) = out.find(" ON CONFLICT") {
        if out[at..].trim_end().ends_with("DO NOTHING") {
            out.truncate(at);
            if let Some(rest) = out.strip_prefix("INSERT INTO ") {
                out = format!("INSERT IGNORE INTO {rest}");
            }
        }
    }
    (out, order)
}

/// Adds one argument to a MySQL statement's arguments.
pub type MySqlBind<'a> = dyn Fn(&mut sqlx::mysql::MySqlArguments) -> Result<(), sqlx::error::BoxDynError> + 'a;

/// The arguments of a MySQL statement: the binds, each added where [`mysql_text`]'s
/// order puts it (once per placeholder that names it).
///
/// # Errors
/// An argument that cannot be encoded.
pub fn mysql_args(order: &[usize], binds: &[&MySqlBind<'_>]) -> Result<sqlx::mysql::MySqlArguments, sqlx::Error> {
    let mut args = sqlx::mysql::MySqlArguments::default();
    for i in order {
        let bind =
            binds.get(*i).ok_or_else(|| sqlx::Error::Protocol(format!("placeholder ${} has no argument", i + 1)))?;
        bind(&mut args).map_err(sqlx::Error::Encode)?;
    }
    Ok(args)
}

/// The current time as SQL, per backend: `now()` / RFC 3339 text in UTC.
pub const NOW_LITE: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// Runs one sqlx statement on an [`Ex`] (or anything that converts into one: `&Db`,
/// `&mut Tx`):
///
/// `sql!(ex, query_scalar("SELECT … WHERE id = $1").bind(id).fetch_one())`
///
/// `query(..) … .execute()` returns the number of rows affected. The statement text is
/// anything that converts into a [`Sql`]: `"…"` for every backend, or
/// `("postgres …", "sqlite …")` (MySQL translating the first), or
/// `("postgres …", "sqlite …", "mysql …")`.
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
            $crate::db::Ex::MySqlPool(e) => {
                $crate::sql!(@mysql query, __sql, e, [$($b),*], execute).map(|r| r.rows_affected())
            }
            $crate::db::Ex::MySql(e) => $crate::sql!(@mysql query, __sql, e, [$($b),*], execute).map(|r| r.rows_affected()),
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
            $crate::db::Ex::MySqlPool(e) => $crate::sql!(@mysql $kind, __sql, e, [$($b),*], $exec),
            $crate::db::Ex::MySql(e) => $crate::sql!(@mysql $kind, __sql, e, [$($b),*], $exec),
            $crate::db::Ex::SqlitePool(e) => sqlx::$kind(__sql.lite)$(.bind($b))*.$exec(e).await,
            $crate::db::Ex::Sqlite(e) => sqlx::$kind(__sql.lite)$(.bind($b))*.$exec(e).await,
        }
    }};
    // MySQL: the translated text, its arguments in placeholder order.
    (@mysql $kind:ident, $sql:ident, $e:ident, [$($b:expr),*], $exec:ident) => {{
        let (__text, __order) = $sql.mysql();
        let __args = $crate::db::mysql_args(
            &__order,
            &[$(&{
                let __v = $b;
                move |a: &mut sqlx::mysql::MySqlArguments| sqlx::Arguments::add(a, &__v)
            }),*],
        );
        match __args {
            Ok(__a) => $crate::sql!(@with $kind)(&__text, __a).$exec($e).await,
            Err(__err) => Err(__err),
        }
    }};
    (@with query) => { sqlx::query_with::<sqlx::MySql, _> };
    (@with query_as) => { sqlx::query_as_with::<sqlx::MySql, _, _> };
    (@with query_scalar) => { sqlx::query_scalar_with::<sqlx::MySql, _, _> };
}
