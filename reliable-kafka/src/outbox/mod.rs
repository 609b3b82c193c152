//! Transactional outbox: write an event in the same database transaction as the
//! business change; the [`OutboxRelay`] publishes it after commit.

mod builder;
mod pipeline;
mod record;
mod relay;
mod sequence;
#[cfg(test)]
mod sequence_model;
mod stats;

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::error::validate_identifier;
use crate::store::outbox::NewOutboxRow;
use crate::{BackendConnection, Codec, ConfigError, Error, Event};

pub use builder::{OutboxRelayBuilder, DEFAULT_MAX_PENDING_AGE, MAX_SHARDS};
#[cfg(feature = "testing")]
pub(crate) use pipeline::Until;
pub use record::HeaderFormat;
pub use relay::{OutboxRelay, RelayBatch, RelayHandle};
pub use stats::RelayStats;

/// Writes events to the outbox table inside the caller's transaction.
///
/// Cheap to clone; keep one per application. The same `Outbox` works on either
/// backend: [`Outbox::enqueue`] takes a PostgreSQL or an SQLite connection.
///
/// ```no_run
/// # use reliable_kafka::{Event, Outbox};
/// # use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize, Event)]
/// #[event(topic = "payment.failed", key = payment_id)]
/// struct PaymentFailed { payment_id: i64 }
///
/// # async fn f(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let outbox = Outbox::new();
/// let mut tx = pool.begin().await?;
/// sqlx::query("UPDATE payment SET status = 'FAILED' WHERE id = $1").bind(7_i64).execute(&mut *tx).await?;
/// outbox.enqueue(&mut tx, &PaymentFailed { payment_id: 7 }).await?;
/// tx.commit().await?; // the event exists if and only if the update committed
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Outbox {
    insert_sql: String,
}

impl Default for Outbox {
    fn default() -> Self {
        Self::new()
    }
}

/// Extra data for one outbox row, see [`Outbox::enqueue_with`].
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// Destination topic; [`Event::TOPIC`] when `None`.
    pub topic: Option<String>,
    /// Message id; a new UUIDv7 when `None`. Set it to make a retried business
    /// operation enqueue the same message (the insert then fails on the primary key).
    pub message_id: Option<Uuid>,
    /// W3C `traceparent` to propagate to consumers. When `None` (and `headers` has no
    /// `traceparent`), the `opentelemetry` feature writes the current span's context
    /// (`traceparent`, `tracestate`).
    pub traceparent: Option<String>,
    /// Additional record headers (UTF-8 values).
    pub headers: BTreeMap<String, String>,
}

impl Outbox {
    /// An outbox on the default table `rk_outbox` (created by [`crate::migrate`]).
    pub fn new() -> Self {
        Self::with_table(crate::schema::DEFAULT_OUTBOX_TABLE).expect("default table name is valid")
    }

    /// An outbox on `table` (optionally `schema.table`), which must have the columns of
    /// the crate's migration.
    ///
    /// # Errors
    /// [`ConfigError::InvalidIdentifier`] naming `outbox_table` when `table` is not a
    /// plain lowercase SQL identifier.
    pub fn with_table(table: &str) -> Result<Self, ConfigError> {
        validate_identifier("outbox_table", table)?;
        Ok(Outbox { insert_sql: crate::store::sql::outbox_insert(table) })
    }

    /// Enqueues `event` in the transaction `tx`: it is published after `tx` commits,
    /// and never if it rolls back. Returns the message id.
    ///
    /// `tx` is the connection of an open transaction: `&mut tx` for a
    /// `sqlx::Transaction<'_, Postgres>` or `sqlx::Transaction<'_, Sqlite>`, or `ctx.tx()` inside an event handler (the
    /// follow-up event then commits with the handler's effects and its deduplication
    /// row). On a connection outside a transaction the row commits on its own.
    ///
    /// # Errors
    /// [`Error::Codec`] when the event cannot be encoded, [`Error::Database`] when the
    /// insert fails (the transaction is then aborted, as for any failed statement).
    /// Inside a handler, `?` turns either into a [`crate::HandlerError`] that keeps the
    /// classification ([`Error::is_transient`]).
    pub async fn enqueue<C: BackendConnection + ?Sized, E: Event>(&self, tx: &mut C, event: &E) -> Result<Uuid, Error> {
        self.enqueue_with(tx, event, EnqueueOptions::default()).await
    }

    /// [`Outbox::enqueue`] with a chosen message id, trace context or extra headers.
    ///
    /// # Errors
    /// As [`Outbox::enqueue`].
    pub async fn enqueue_with<C: BackendConnection + ?Sized, E: Event>(
        &self,
        tx: &mut C,
        event: &E,
        options: EnqueueOptions,
    ) -> Result<Uuid, Error> {
        let payload = E::Codec::encode(event).map_err(Error::Codec)?;
        let EnqueueOptions { topic, message_id, traceparent, mut headers } = options;
        let id = message_id.unwrap_or_else(Uuid::now_v7);
        match traceparent {
            Some(tp) => {
                headers.insert(crate::headers::TRACEPARENT.to_owned(), tp);
            }
            // The current span's context, unless the caller set the header itself.
            None if !headers.contains_key(crate::headers::TRACEPARENT) => {
                headers.extend(crate::telemetry::current_trace_headers().into_iter().map(|(k, v)| (k.to_owned(), v)));
            }
            None => {}
        }
        let key = event.key();
        let row = NewOutboxRow {
            id,
            topic: topic.as_deref().unwrap_or(E::TOPIC),
            key_hash: key.as_deref().map(|k| crate::store::outbox::key_hash(k.as_bytes())),
            key,
            event_type: E::EVENT_TYPE,
            schema_version: E::SCHEMA_VERSION as i32,
            payload,
            content_type: E::Codec::CONTENT_TYPE,
            headers: &headers,
        };
        <C::Backend as crate::store::outbox::OutboxStore>::insert_outbox(tx.connection(), &self.insert_sql, row)
            .await
            .map_err(Error::db("insert outbox row"))?;
        crate::telemetry::record::enqueued(topic.as_deref().unwrap_or(E::TOPIC));
        Ok(id)
    }
}
