//! The operations API: what an operator needs to see without SQL of their own.

use sqlx::Pool;

use crate::error::validate_identifier;
use crate::store::sql;
use crate::{Backend, ConfigError, DefaultBackend, Error, OutboxBacklog, ParkedMessage};

/// Reads the framework's tables for operations: the outbox backlog and the parked
/// records. Cheap to clone; each call is one query.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> Result<(), reliable_kafka::Error> {
/// let ops = reliable_kafka::Operations::new(pool);
/// let backlog = ops.outbox_backlog().await?;
/// println!("{} pending, oldest {:?}, {} parked", backlog.pending, backlog.oldest_pending_age, backlog.parked);
/// for parked in ops.parked_messages(20).await? {
///     println!("{} {:?}: {}", parked.dead_letter_topic, parked.message_id, parked.reason);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Operations<DB: Backend = DefaultBackend> {
    pool: Pool<DB>,
    backlog_sql: String,
    parked_list_sql: String,
    parked_count_sql: String,
}

impl<DB: Backend> Operations<DB> {
    /// Operations on the default tables (`rk_outbox`, `rk_parked_messages`).
    pub fn new(pool: Pool<DB>) -> Self {
        let outbox = crate::schema::DEFAULT_OUTBOX_TABLE;
        let parked = crate::schema::DEFAULT_PARKED_TABLE;
        Operations {
            pool,
            backlog_sql: sql::outbox_backlog(outbox),
            parked_list_sql: sql::parked_list(parked),
            parked_count_sql: sql::parked_count(parked),
        }
    }

    /// Uses the outbox table `table` (optionally `schema.table`).
    ///
    /// # Errors
    /// [`ConfigError::InvalidIdentifier`] naming `outbox_table`.
    pub fn outbox_table(mut self, table: &str) -> Result<Self, ConfigError> {
        validate_identifier("outbox_table", table)?;
        self.backlog_sql = sql::outbox_backlog(table);
        Ok(self)
    }

    /// Uses the parked-records table `table` (optionally `schema.table`).
    ///
    /// # Errors
    /// [`ConfigError::InvalidIdentifier`] naming `parked_table`.
    pub fn parked_table(mut self, table: &str) -> Result<Self, ConfigError> {
        validate_identifier("parked_table", table)?;
        self.parked_list_sql = sql::parked_list(table);
        self.parked_count_sql = sql::parked_count(table);
        Ok(self)
    }

    /// The outbox's pending rows, the age of the oldest, the rows the relay parked
    /// and the delivered rows kept by retention.
    ///
    /// # Errors
    /// [`Error::Database`] when the query fails.
    pub async fn outbox_backlog(&self) -> Result<OutboxBacklog, Error> {
        DB::outbox_backlog(&self.pool, &self.backlog_sql).await.map_err(Error::db("read outbox backlog"))
    }

    /// The number of parked dead-letter records.
    ///
    /// # Errors
    /// [`Error::Database`] when the query fails.
    pub async fn parked_count(&self) -> Result<u64, Error> {
        DB::parked_count(&self.pool, &self.parked_count_sql).await.map_err(Error::db("count parked records"))
    }

    /// Up to `limit` parked dead-letter records, newest first.
    ///
    /// # Errors
    /// [`Error::Database`] when the query fails.
    pub async fn parked_messages(&self, limit: usize) -> Result<Vec<ParkedMessage>, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        DB::parked_list(&self.pool, &self.parked_list_sql, limit).await.map_err(Error::db("list parked records"))
    }
}
