//! The operations API: what an operator needs to see and do without SQL of their own:
//! the outbox backlog per topic, dead-letter topics read and replayed, parked records
//! listed, replayed and purged, every change written to the `rk_audit` table. The
//! `rk` CLI (crate `reliable-kafka-cli`) is a thin shell over it; a service can offer
//! the same on its own admin endpoint.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | [`Operations`]: outbox, audit |
//! | `parked.rs` | parked records: list, replay, purge |
//! | `dead_letters.rs` | [`DeadLetterRecord`], [`DeadLetterFilter`], [`read_dead_letters`] |

mod dead_letters;
pub(crate) mod parked;

use std::time::Duration;

use chrono::Utc;
use sqlx::Pool;

pub use dead_letters::{decode_header, read_dead_letters, DeadLetterFilter, DeadLetterRecord, PayloadView};
pub use parked::ReplayReport;

use crate::error::validate_identifier;
use crate::store::ops::AuditEntry;
use crate::store::sql;
use crate::{
    Backend, ConfigError, DeadLetterRedriver, DefaultBackend, Error, OutboxBacklog, ParkedMessage, RedriveReport,
};

/// The outbox backlog of one topic, see [`Operations::outbox_topics`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicBacklog {
    /// The topic.
    pub topic: String,
    /// Rows committed and not yet published (records).
    pub pending: u64,
    /// Age of the oldest pending row; `None` when nothing is pending.
    pub oldest_pending_age: Option<Duration>,
    /// Rows the relay parked after `max_send_attempts` rejections (records).
    pub parked: u64,
}

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
    topics_sql: String,
    retry_sql: String,
    parked_list_sql: String,
    parked_count_sql: String,
    parked_delete_sql: String,
    parked_get_sql: String,
}

impl<DB: Backend> Operations<DB> {
    /// Operations on the default tables (`rk_outbox`, `rk_parked_messages`).
    pub fn new(pool: Pool<DB>) -> Self {
        let outbox = crate::schema::DEFAULT_OUTBOX_TABLE;
        let parked = crate::schema::DEFAULT_PARKED_TABLE;
        Operations {
            pool,
            backlog_sql: sql::outbox_backlog(outbox),
            topics_sql: sql::outbox_topics(outbox),
            retry_sql: sql::outbox_retry(outbox),
            parked_list_sql: sql::parked_list(parked),
            parked_count_sql: sql::parked_count(parked),
            parked_delete_sql: sql::parked_delete(parked),
            parked_get_sql: sql::parked_get(parked),
        }
    }

    /// Uses the outbox table `table` (optionally `schema.table`).
    ///
    /// # Errors
    /// [`ConfigError::InvalidIdentifier`] naming `outbox_table`.
    pub fn outbox_table(mut self, table: &str) -> Result<Self, ConfigError> {
        validate_identifier("outbox_table", table)?;
        self.backlog_sql = sql::outbox_backlog(table);
        self.topics_sql = sql::outbox_topics(table);
        self.retry_sql = sql::outbox_retry(table);
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
        self.parked_delete_sql = sql::parked_delete(table);
        self.parked_get_sql = sql::parked_get(table);
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

impl<DB: Backend> Operations<DB> {
    /// The backlog per topic (topics with pending or parked rows), by topic name.
    ///
    /// # Errors
    /// [`Error::Database`] when the query fails.
    pub async fn outbox_topics(&self) -> Result<Vec<TopicBacklog>, Error> {
        let rows = DB::outbox_topics(&self.pool, &self.topics_sql).await.map_err(Error::db("read outbox topics"))?;
        Ok(rows
            .into_iter()
            .map(|(topic, pending, oldest, parked)| TopicBacklog {
                topic,
                pending: pending.max(0) as u64,
                oldest_pending_age: oldest.map(|t| (Utc::now() - t).to_std().unwrap_or(Duration::ZERO)),
                parked: parked.max(0) as u64,
            })
            .collect())
    }

    /// Puts the outbox rows the relay parked (of `topic`, or all) back to pending with
    /// their attempts reset, so the relay tries them again; writes an audit row
    /// (`outbox.retry`). Returns the rows.
    ///
    /// # Errors
    /// [`Error::Database`] when the update or the audit insert fails.
    pub async fn retry_parked_outbox(&self, topic: Option<&str>, operator: &str) -> Result<u64, Error> {
        let n = DB::execute_text(&self.pool, &self.retry_sql, topic)
            .await
            .map_err(Error::db("retry parked outbox rows"))?;
        self.audit(operator, "outbox.retry", topic.unwrap_or("all topics"), n, "").await?;
        Ok(n)
    }

    /// Writes an audit row: `operator` did `action` to `records` records of `target`.
    ///
    /// # Errors
    /// [`Error::Database`] when the insert fails.
    pub async fn audit(
        &self,
        operator: &str,
        action: &str,
        target: &str,
        records: u64,
        detail: &str,
    ) -> Result<(), Error> {
        let records = i64::try_from(records).unwrap_or(i64::MAX);
        DB::insert_audit(&self.pool, &sql::audit_insert(), (operator, action, target, records, detail))
            .await
            .map_err(Error::db("write audit row"))
    }

    /// The newest audit rows, at most `limit`.
    ///
    /// # Errors
    /// [`Error::Database`] when the query fails.
    pub async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        DB::audit_list(&self.pool, &sql::audit_list(), limit).await.map_err(Error::db("read audit rows"))
    }

    /// One run of `redriver` (see [`DeadLetterRedriver::redrive_once`]: its filter,
    /// rate limit, record limit and dry run apply), then, unless it was a dry run, an
    /// audit row (`dlq.replay`) with what it re-drove and parked.
    ///
    /// # Errors
    /// The run's error (what it handled before is committed and audited);
    /// [`Error::Database`] when the audit insert fails.
    pub async fn replay_dead_letters(
        &self,
        redriver: &DeadLetterRedriver<DB>,
        operator: &str,
        detail: &str,
    ) -> Result<RedriveReport, Error> {
        let before = (redriver.stats().redriven(), redriver.stats().parked());
        let result = redriver.redrive_once().await;
        if !redriver.is_dry_run() {
            let (redriven, parked) = (redriver.stats().redriven() - before.0, redriver.stats().parked() - before.1);
            let detail = format!("{detail} redriven={redriven} parked={parked}");
            self.audit(operator, "dlq.replay", &redriver.topics().join(","), redriven, detail.trim()).await?;
        }
        result
    }
}
