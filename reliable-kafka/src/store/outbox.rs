//! The outbox table as the backends store it: the insert of [`crate::Outbox`], the
//! claim → publish → mark transaction of the relay, retention, the backlog.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Pool;
use uuid::Uuid;

use crate::Error;

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
    pub id: Uuid,
    pub topic: String,
    pub key: Option<String>,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Vec<u8>,
    pub content_type: String,
    pub headers: serde_json::Value,
    pub created_at: DateTime<Utc>,
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

/// A row whose send failed, with the error kept typed until it is written to the
/// row's `last_error` column.
pub struct SendFailure {
    pub id: Uuid,
    pub error: rdkafka::error::KafkaError,
    /// The broker rejected the record itself; counts toward `max_send_attempts`.
    pub permanent: bool,
}

impl SendFailure {
    /// The text stored in `last_error`.
    pub(crate) fn message(&self) -> String {
        crate::report(&self.error)
    }
}

/// What the relay's publish step returns: delivered ids and failures.
#[derive(Default)]
pub struct Published {
    pub delivered: Vec<Uuid>,
    pub failed: Vec<SendFailure>,
}

/// Counts of an outbox table, see [`crate::Operations::outbox_backlog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct OutboxBacklog {
    /// Rows committed and not yet published (records).
    pub pending: u64,
    /// Age of the oldest pending row: how far the relay is behind; `None` when nothing
    /// is pending.
    pub oldest_pending_age: Option<Duration>,
    /// Rows the relay gave up on after `max_send_attempts` rejections (records); each
    /// has `last_error` set.
    pub parked: u64,
    /// Published rows kept until the relay's retention deletes them (records).
    pub delivered: u64,
}

/// What the relay waits on between batches besides its poll interval.
pub trait OutboxListener: Send {
    /// Resolves when rows may have been committed.
    fn recv(&mut self) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_;
}

/// A listener that never fires, for backends without notifications (SQLite).
#[cfg(feature = "sqlite")]
#[derive(Debug)]
pub enum NoListener {}

#[cfg(feature = "sqlite")]
impl OutboxListener for NoListener {
    async fn recv(&mut self) -> Result<(), sqlx::Error> {
        match *self {}
    }
}

/// The outbox and the relay of a backend.
pub trait OutboxStore: sqlx::Database + Sized {
    /// The relay's statements for one outbox table.
    type RelaySql: std::fmt::Debug + Send + Sync + 'static;
    /// How the relay learns of committed rows.
    type Listener: OutboxListener;

    /// Inserts `row` with `sql` ([`super::sql::outbox_insert`]).
    fn insert_outbox<'a>(
        conn: &'a mut Self::Connection,
        sql: &'a str,
        row: NewOutboxRow<'a>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// The relay's statements for `table`; delivered rows are deleted at once when
    /// `delete_on_delivery`.
    fn relay_sql(table: &str, delete_on_delivery: bool) -> Self::RelaySql;

    /// Claims up to `limit` rows, publishes them with `publish` and records the
    /// outcome; `Ok(None)` when another instance holds the relay lock.
    fn relay_batch<'a, F, Fut>(
        pool: &'a Pool<Self>,
        sql: &'a Self::RelaySql,
        limit: i64,
        max_attempts: i32,
        publish: F,
    ) -> impl Future<Output = Result<Option<Published>, Error>> + Send + 'a
    where
        F: FnOnce(Vec<OutboxRow>) -> Fut + Send + 'a,
        Fut: Future<Output = Published> + Send + 'a;

    /// Deletes up to [`super::sql::DELETE_BATCH`] rows delivered before `older_than`.
    fn cleanup_outbox<'a>(
        pool: &'a Pool<Self>,
        sql: &'a Self::RelaySql,
        older_than: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;

    /// A listener for the outbox notifications; `None` when the backend has none or
    /// it cannot listen now (the relay then polls).
    fn outbox_listener(pool: &Pool<Self>) -> impl Future<Output = Option<Self::Listener>> + Send + '_;

    /// The counts of an outbox table, with `sql` ([`super::sql::outbox_backlog`]).
    fn outbox_backlog<'a>(
        pool: &'a Pool<Self>,
        sql: &'a str,
    ) -> impl Future<Output = Result<OutboxBacklog, sqlx::Error>> + Send + 'a;
}

/// The backlog from the raw counts of [`super::sql::outbox_backlog`].
pub(crate) fn backlog(pending: i64, oldest: Option<DateTime<Utc>>, parked: i64, delivered: i64) -> OutboxBacklog {
    OutboxBacklog {
        pending: pending.max(0) as u64,
        oldest_pending_age: oldest.map(|t| (Utc::now() - t).to_std().unwrap_or(Duration::ZERO)),
        parked: parked.max(0) as u64,
        delivered: delivered.max(0) as u64,
    }
}
