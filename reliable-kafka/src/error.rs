//! Error types of the crate.
//!
//! One runtime error enum ([`Error`], classifiable with [`Error::kind`] and
//! [`Error::is_transient`]) and one configuration error enum ([`ConfigError`]).
//! Messages are lowercase and never repeat their cause: the cause is kept as
//! [`std::error::Error::source`], so [`report`] walking the chain prints it once.

use std::borrow::Cow;

/// A boxed error from user code (handlers, codecs).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors returned by the outbox, the relay, the listener container, the re-driver and
/// the operations API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A database operation failed (connection, query, commit).
    #[error("database operation failed: {operation}")]
    Database {
        /// What the framework was doing, e.g. `"claim outbox rows"`.
        operation: &'static str,
        /// The sqlx error, with its SQLSTATE when the server sent one.
        #[source]
        source: sqlx::Error,
    },
    /// Running the crate's schema migrations failed.
    #[error("schema migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A Kafka client operation failed.
    #[error("kafka operation failed: {operation}")]
    Kafka {
        /// What the framework was doing, e.g. `"create consumer"`.
        operation: &'static str,
        /// The librdkafka error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// An event could not be encoded for the outbox.
    #[error("event could not be encoded")]
    Codec(#[source] crate::CodecError),
    /// The configuration was rejected.
    #[error("invalid configuration")]
    Config(#[source] ConfigError),
    /// A Redis operation of the Redis deduplication store failed (feature `redis`).
    #[cfg(feature = "redis")]
    #[error("redis operation failed: {operation}")]
    Redis {
        /// What the framework was doing, e.g. `"commit the handler's Redis transaction"`.
        operation: &'static str,
        /// The Redis error.
        #[source]
        source: redis::RedisError,
    },
    /// A worker task ended without a result (it was aborted by its runtime).
    #[error("worker `{worker}` was cancelled before it finished")]
    WorkerCancelled {
        /// The worker's name (its consumer group, outbox table or re-drive group).
        worker: String,
    },
}

/// What kind of [`Error`] this is, for callers that decide by category
/// (see [`Error::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`Error::Database`].
    Database,
    /// [`Error::Migrate`].
    Migrate,
    /// [`Error::Kafka`].
    Kafka,
    /// [`Error::Codec`].
    Codec,
    /// [`Error::Config`].
    Config,
    /// [`Error::WorkerCancelled`].
    WorkerCancelled,
    /// `Error::Redis` (feature `redis`).
    #[cfg(feature = "redis")]
    Redis,
}

impl Error {
    pub(crate) fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Error::Database { operation, source }
    }

    #[cfg(feature = "redis")]
    pub(crate) fn redis(operation: &'static str) -> impl FnOnce(redis::RedisError) -> Self {
        move |source| Error::Redis { operation, source }
    }

    pub(crate) fn kafka(operation: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        move |source| Error::Kafka { operation, source }
    }

    /// The error's category.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Database { .. } => ErrorKind::Database,
            Error::Migrate(_) => ErrorKind::Migrate,
            Error::Kafka { .. } => ErrorKind::Kafka,
            Error::Codec(_) => ErrorKind::Codec,
            Error::Config(_) => ErrorKind::Config,
            Error::WorkerCancelled { .. } => ErrorKind::WorkerCancelled,
            #[cfg(feature = "redis")]
            Error::Redis { .. } => ErrorKind::Redis,
        }
    }

    /// Whether trying again later may succeed: a lost or refused database connection,
    /// a pool timeout, a serialization failure or deadlock (see [`is_transient_sqlx`]),
    /// or a Kafka error librdkafka calls retriable (a broker outage, a timeout, a
    /// leader change). Configuration, encoding and migration errors are not.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database { source, .. } => is_transient_sqlx(source),
            Error::Migrate(sqlx::migrate::MigrateError::Execute(e)) => is_transient_sqlx(e),
            Error::Kafka { source, .. } => crate::kafka::is_transient_kafka(source),
            // A lost connection, a timeout, a server busy or loading, an aborted `EXEC`.
            #[cfg(feature = "redis")]
            Error::Redis { source, .. } => {
                source.is_io_error()
                    || source.is_timeout()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
                    || matches!(
                        source.kind(),
                        redis::ErrorKind::BusyLoadingError
                            | redis::ErrorKind::TryAgain
                            | redis::ErrorKind::ExecAbortError
                    )
            }
            Error::Migrate(_) | Error::Codec(_) | Error::Config(_) | Error::WorkerCancelled { .. } => false,
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

/// Whether a database error may pass on its own: lost connections, pool timeouts, I/O
/// and TLS errors, the PostgreSQL SQLSTATE classes `08` (connection), `40`
/// (serialization failure, deadlock), `53` (insufficient resources) and `57` (operator
/// intervention, e.g. a server restart), and SQLite's `SQLITE_BUSY` and
/// `SQLITE_LOCKED` (with their extended codes), and MySQL's lock wait timeout (1205),
/// deadlock (1213), connection limits and shutdowns (1040, 1053, 1317, 1927), `NOWAIT`
/// (3572) and read-only server (1290, 1836) errors. Constraint violations, bad SQL and
/// decoding errors are not.
pub fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            #[cfg(feature = "sqlite")]
            if let Some(lite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                return sqlx::error::DatabaseError::code(lite)
                    .and_then(|c| c.parse::<i32>().ok())
                    .is_some_and(|c| matches!(c & 0xff, 5 | 6));
            }
            #[cfg(feature = "mysql")]
            if let Some(n) = crate::store::mysql::mysql_error_number(&**db) {
                // Lock wait timeout, deadlock, too many connections, server shutdown,
                // query interrupted, connection killed (MariaDB), lock not granted
                // (`NOWAIT`), read-only server (during a failover).
                return matches!(n, 1205 | 1213 | 1040 | 1053 | 1317 | 1927 | 3572 | 1290 | 1836);
            }
            db.code().is_some_and(|c| ["08", "40", "53", "57"].iter().any(|class| c.starts_with(class)))
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// A configuration value was rejected when a builder or constructor ran.
///
/// Every variant names the offending key, so the message points at the line of
/// configuration to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The value of `key` is out of range or malformed.
    #[error("invalid value for `{key}`: {reason}")]
    InvalidValue {
        /// Configuration key, e.g. `"max_attempts"`.
        key: Cow<'static, str>,
        /// What is wrong with it.
        reason: Cow<'static, str>,
    },
    /// A required key was not set.
    #[error("missing required configuration `{key}`")]
    Missing {
        /// Configuration key.
        key: Cow<'static, str>,
    },
    /// A table or schema name is not a plain SQL identifier.
    #[error("invalid SQL identifier for `{key}`: {value:?} (expected [a-z_][a-z0-9_]*, at most 63 bytes, optionally schema-qualified)")]
    InvalidIdentifier {
        /// Configuration key, e.g. `"outbox_table"`.
        key: Cow<'static, str>,
        /// The rejected value.
        value: String,
    },
    /// The dead-letter topic of a handler equals the topic it consumes.
    #[error("dead-letter topic of `{topic}` must differ from the topic itself")]
    DeadLetterTopicIsSource {
        /// The consumed topic.
        topic: String,
    },
    /// Two handlers registered for the same topic in one container (0.2; since
    /// route tables, [`ConfigError::DuplicateRoute`] is reported instead).
    #[error("more than one handler registered for topic `{topic}`")]
    DuplicateHandler {
        /// The topic.
        topic: String,
    },
    /// Two handlers of one topic take the same event type.
    #[error("more than one handler of topic `{topic}` takes event type `{event_type}`")]
    DuplicateRoute {
        /// The topic.
        topic: String,
        /// The event type.
        event_type: String,
    },
    /// A handler declares a consumer group different from the container's.
    #[error("handler for `{topic}` declares group `{handler_group}` but the container's group is `{container_group}`")]
    GroupMismatch {
        /// The handler's topic.
        topic: String,
        /// The group in the handler's declaration.
        handler_group: String,
        /// The group of the container.
        container_group: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(key: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        ConfigError::InvalidValue { key: Cow::Borrowed(key), reason: reason.into() }
    }
}

/// Checks that `value` is a plain, optionally schema-qualified SQL identifier, so it
/// can be placed in SQL text without quoting or injection risk.
pub(crate) fn validate_identifier(key: &'static str, value: &str) -> Result<(), ConfigError> {
    fn part_ok(p: &str) -> bool {
        let mut chars = p.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && p.len() <= 63
    }
    let parts: Vec<&str> = value.split('.').collect();
    if parts.len() <= 2 && parts.iter().all(|p| part_ok(p)) {
        Ok(())
    } else {
        Err(ConfigError::InvalidIdentifier { key: Cow::Borrowed(key), value: value.to_owned() })
    }
}

/// The error and its whole `source()` chain, `": "`-separated: the form written to the
/// `kafka_dlt-exception-message` header and to logs.
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(validate_identifier("t", "rk_outbox").is_ok());
        assert!(validate_identifier("t", "app.rk_outbox").is_ok());
        for bad in ["", "Outbox", "a;drop table x", "a.b.c", "1abc", "a-b", "\"x\""] {
            let err = validate_identifier("outbox_table", bad).unwrap_err();
            assert!(err.to_string().contains("outbox_table"), "{err}");
        }
    }

    #[test]
    fn classification() {
        let lost = Error::Database { operation: "x", source: sqlx::Error::PoolTimedOut };
        assert_eq!(lost.kind(), ErrorKind::Database);
        assert!(lost.is_transient());
        let bad_sql = Error::Database { operation: "x", source: sqlx::Error::RowNotFound };
        assert!(!bad_sql.is_transient());
        let config: Error = ConfigError::invalid("k", "r").into();
        assert_eq!(config.kind(), ErrorKind::Config);
        assert!(!config.is_transient());
        let outage = Error::Kafka {
            operation: "x",
            source: rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::AllBrokersDown),
        };
        assert!(outage.is_transient());
        let too_large = Error::Kafka {
            operation: "x",
            source: rdkafka::error::KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge,
            ),
        };
        assert!(!too_large.is_transient());
    }

    #[test]
    fn report_walks_the_chain_once() {
        let e = Error::Database { operation: "claim outbox rows", source: sqlx::Error::PoolTimedOut };
        let r = report(&e);
        assert!(r.starts_with("database operation failed: claim outbox rows: "), "{r}");
        assert_eq!(r.matches("pool timed out").count(), 1, "{r}");
    }
}
