//! Parked records: dead letters the re-driver gave up on, kept for a person.

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::Pool;

/// A dead-letter record to park.
pub struct ParkRow<'a> {
    pub dead_letter_topic: &'a str,
    pub dead_letter_partition: i32,
    pub dead_letter_offset: i64,
    pub message_id: Option<String>,
    pub original_topic: Option<String>,
    pub original_partition: Option<i32>,
    pub original_offset: Option<i64>,
    pub consumer_group: Option<String>,
    pub reason: String,
    pub error_message: Option<String>,
    pub attempts: Option<i32>,
    pub redrive_count: i32,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: serde_json::Value,
    pub dead_lettered_at: Option<DateTime<Utc>>,
}

/// A parked record (a row of `rk_parked_messages`), see
/// [`crate::Operations::parked_messages`].
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
#[non_exhaustive]
pub struct ParkedMessage {
    /// Row id, increasing in parking order.
    pub id: i64,
    /// The dead-letter topic the record was read from.
    pub dead_letter_topic: String,
    /// Its partition there.
    pub dead_letter_partition: i32,
    /// Its offset there.
    pub dead_letter_offset: i64,
    /// The envelope's message id, if the record had one.
    pub message_id: Option<String>,
    /// Topic the record was first consumed from (`kafka_dlt-original-topic`).
    pub original_topic: Option<String>,
    /// Its partition there.
    pub original_partition: Option<i32>,
    /// Its offset there.
    pub original_offset: Option<i64>,
    /// Consumer group that dead-lettered it.
    pub consumer_group: Option<String>,
    /// Why it was parked, e.g. `re-driven 3 times (max 3)`.
    pub reason: String,
    /// The error with its source chain (`kafka_dlt-exception-message`).
    pub error_message: Option<String>,
    /// Delivery attempts before dead-lettering.
    pub attempts: Option<i32>,
    /// Re-drives before parking.
    pub redrive_count: i32,
    /// Record key.
    #[sqlx(rename = "record_key")]
    pub key: Option<Vec<u8>>,
    /// Record payload; `None` when the dead letter carried none (too large).
    pub payload: Option<Vec<u8>>,
    /// The dead letter's headers, in order: `[{"key": .., "value": ..}]` for text
    /// values, `{"key": .., "hex": ..}` for binary ones, `{"key": ..}` for null.
    #[sqlx(json)]
    pub headers: serde_json::Value,
    /// When it was dead-lettered (the dead-letter record's timestamp).
    pub dead_lettered_at: Option<DateTime<Utc>>,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

/// The parked-records table of a backend.
pub trait ParkStore: sqlx::Database + Sized {
    /// Inserts `row` with `sql` ([`super::sql::park_insert`]).
    fn park<'a>(
        pool: &'a Pool<Self>,
        sql: &'a str,
        row: ParkRow<'a>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// Parked records with `sql` ([`super::sql::parked_list`]), newest first.
    fn parked_list<'a>(
        pool: &'a Pool<Self>,
        sql: &'a str,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<ParkedMessage>, sqlx::Error>> + Send + 'a;

    /// The number of parked records, with `sql` ([`super::sql::parked_count`]).
    fn parked_count<'a>(
        pool: &'a Pool<Self>,
        sql: &'a str,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;
}
