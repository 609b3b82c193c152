//! Error types of the crate.
//!
//! One runtime error enum ([`Error`]) and one configuration error enum
//! ([`ConfigError`]). Messages are lowercase and never repeat their cause: the
//! cause is kept as [`std::error::Error::source`], so a report walking the chain
//! prints it once.

use std::borrow::Cow;

/// A boxed error from user code (handlers, codecs).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors returned by the outbox, the relay and the listener container.
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
}

impl Error {
    pub(crate) fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Error::Database { operation, source }
    }

    pub(crate) fn kafka(operation: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        move |source| Error::Kafka { operation, source }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
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
    /// Two handlers registered for the same topic in one container.
    #[error("more than one handler registered for topic `{topic}`")]
    DuplicateHandler {
        /// The topic.
        topic: String,
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
}
