//! [`AnyPool`]: a pool of one of the backends, chosen by the URL.

use crate::{ConfigError, Error};

/// A pool of one of the backends, chosen by the URL scheme: `postgres://` or
/// `postgresql://` for PostgreSQL (feature `postgres`), `mysql://` or `mariadb://` for
/// MySQL and MariaDB (feature `mysql`), `sqlite:` for SQLite (feature `sqlite`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AnyPool {
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    /// MySQL or MariaDB.
    #[cfg(feature = "mysql")]
    MySql(sqlx::MySqlPool),
    /// SQLite.
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
}

/// How long an SQLite writer waits for the write lock before `SQLITE_BUSY`.
#[cfg(feature = "sqlite")]
pub const SQLITE_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl AnyPool {
    /// Connects to `url` with the framework's recommended settings. SQLite: the file is
    /// created if missing, WAL journal, `synchronous=NORMAL`, foreign keys on,
    /// `busy_timeout` [`SQLITE_BUSY_TIMEOUT`] (writers queue instead of failing), at
    /// least 2 connections; an in-memory URL (`sqlite::memory:`) gets one shared
    /// connection. PostgreSQL, MySQL: `max_connections` connections; MySQL sessions run
    /// in UTC (`time_zone = '+00:00'`, sqlx's default).
    ///
    /// # Errors
    /// [`Error::Config`] naming `DATABASE_URL` for an unknown scheme, a scheme whose
    /// backend feature is off, or a malformed URL; [`Error::Database`] when connecting
    /// fails.
    pub async fn connect(url: &str, max_connections: u32) -> Result<AnyPool, Error> {
        match url.split(':').next().unwrap_or_default() {
            "postgres" | "postgresql" => Self::connect_postgres(url, max_connections).await,
            "mysql" | "mariadb" => Self::connect_mysql(url, max_connections).await,
            "sqlite" => Self::connect_sqlite(url, max_connections).await,
            scheme => Err(ConfigError::invalid(
                "DATABASE_URL",
                format!("unsupported scheme `{scheme}`: use postgres://…, mysql://… or sqlite:…"),
            )
            .into()),
        }
    }

    #[cfg(feature = "postgres")]
    async fn connect_postgres(url: &str, max_connections: u32) -> Result<AnyPool, Error> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(max_connections)
            .connect(url)
            .await
            .map_err(Error::db("connect to PostgreSQL"))?;
        Ok(AnyPool::Postgres(pool))
    }

    #[cfg(not(feature = "postgres"))]
    async fn connect_postgres(_url: &str, _max_connections: u32) -> Result<AnyPool, Error> {
        Err(not_compiled("postgres"))
    }

    #[cfg(feature = "mysql")]
    async fn connect_mysql(url: &str, max_connections: u32) -> Result<AnyPool, Error> {
        use std::str::FromStr;
        // sqlx knows the scheme `mysql` only; MariaDB speaks the same protocol.
        let url = match url.strip_prefix("mariadb:") {
            Some(rest) => format!("mysql:{rest}"),
            None => url.to_owned(),
        };
        let options = sqlx::mysql::MySqlConnectOptions::from_str(&url)
            .map_err(|e| ConfigError::invalid("DATABASE_URL", format!("not a valid MySQL URL: {e}")))?;
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await
            .map_err(Error::db("connect to MySQL"))?;
        Ok(AnyPool::MySql(pool))
    }

    #[cfg(not(feature = "mysql"))]
    async fn connect_mysql(_url: &str, _max_connections: u32) -> Result<AnyPool, Error> {
        Err(not_compiled("mysql"))
    }

    #[cfg(feature = "sqlite")]
    async fn connect_sqlite(url: &str, max_connections: u32) -> Result<AnyPool, Error> {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
        use std::str::FromStr;
        use std::time::Duration;
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| ConfigError::invalid("DATABASE_URL", format!("not a valid SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(SQLITE_BUSY_TIMEOUT);
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
    }

    #[cfg(not(feature = "sqlite"))]
    async fn connect_sqlite(_url: &str, _max_connections: u32) -> Result<AnyPool, Error> {
        Err(not_compiled("sqlite"))
    }

    /// `"postgres"`, `"mysql"` or `"sqlite"`.
    pub fn backend_name(&self) -> &'static str {
        match self {
            #[cfg(feature = "postgres")]
            AnyPool::Postgres(_) => "postgres",
            #[cfg(feature = "mysql")]
            AnyPool::MySql(_) => "mysql",
            #[cfg(feature = "sqlite")]
            AnyPool::Sqlite(_) => "sqlite",
        }
    }
}

#[cfg(not(all(feature = "postgres", feature = "mysql", feature = "sqlite")))]
fn not_compiled(feature: &'static str) -> Error {
    ConfigError::invalid(
        "DATABASE_URL",
        format!("this build has no `{feature}` backend: enable reliable-kafka's `{feature}` feature"),
    )
    .into()
}
