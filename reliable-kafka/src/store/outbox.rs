//! The outbox table as the backends store it: the insert of [`crate::Outbox`], the
//! relay's lease (its lock, or its shards), claim and settle, retention, the backlog.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
#[cfg(any(feature = "sqlite", feature = "mysql"))]
use sqlx::FromRow;
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
    /// Kafka's murmur2 hash of the key, sign bit cleared ([`key_hash`]): the row's shard.
    pub key_hash: Option<i32>,
}

/// Kafka's partitioning hash of `key`: 32-bit murmur2 with Kafka's seed, sign bit
/// cleared, as Java's `DefaultPartitioner` and librdkafka's `murmur2` partitioners
/// compute it; `key_hash(k) % partitions` is the key's partition.
pub(crate) fn key_hash(key: &[u8]) -> i32 {
    (murmur2::murmur2(key, 0x9747_b28c) & 0x7fff_ffff) as i32
}

/// An undelivered outbox row, as claimed by the relay.
pub struct OutboxRow {
    /// Insertion order.
    pub seq: i64,
    pub id: Uuid,
    pub topic: String,
    pub key: Option<String>,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Vec<u8>,
    pub content_type: String,
    pub headers: serde_json::Value,
    pub created_at: DateTime<Utc>,
    /// The relay's sequence number, `<source>:<n>` (relays with sequence numbers).
    pub sequence: Option<String>,
}

/// The outbox columns besides the id, as the backends store them (the id's type
/// differs: `uuid` on PostgreSQL, text on MySQL and SQLite).
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
    pub(crate) fn with_id(self, seq: i64, id: Uuid) -> OutboxRow {
        OutboxRow {
            seq,
            id,
            topic: self.aggregatetype,
            key: self.aggregateid,
            event_type: self.event_type,
            schema_version: self.schema_version,
            payload: self.payload,
            content_type: self.content_type,
            headers: self.headers.0,
            created_at: self.created_at,
            sequence: None,
        }
    }
}

/// An outbox row whose id is text (SQLite, MySQL), as the relay claims it.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
#[derive(sqlx::FromRow)]
pub(crate) struct TextIdOutboxRow {
    seq: i64,
    id: String,
    #[sqlx(flatten)]
    columns: OutboxColumns,
}

/// A claimed row that cannot be read: its `seq` and why.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) type Malformed = (i64, String);

/// Decodes claimed rows; rows another tool wrote that cannot be read (an id that is
/// not a UUID, headers that are not JSON) come back apart, as `(seq, reason)`, to be
/// parked with the reason instead of blocking the table.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn decode_text_id_rows<R>(rows: Vec<R>) -> Result<(Vec<OutboxRow>, Vec<Malformed>), Error>
where
    R: sqlx::Row,
    for<'r> TextIdOutboxRow: sqlx::FromRow<'r, R>,
    i64: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
    for<'n> &'n str: sqlx::ColumnIndex<R>,
{
    let mut claimed = Vec::with_capacity(rows.len());
    let mut malformed = Vec::new();
    for row in rows {
        let seq: i64 = row.try_get("seq").map_err(Error::db("claim outbox rows"))?;
        let decoded =
            TextIdOutboxRow::from_row(&row).map_err(|e| crate::report(&e)).and_then(|r| match Uuid::parse_str(&r.id) {
                Ok(id) => Ok(r.columns.with_id(r.seq, id)),
                Err(e) => Err(format!("id {:?} is not a UUID: {e}", r.id)),
            });
        match decoded {
            Ok(row) => claimed.push(row),
            Err(why) => {
                tracing::error!(seq, reason = %why, "malformed outbox row parked");
                malformed.push((seq, format!("malformed outbox row: {why}")));
            }
        }
    }
    Ok((claimed, malformed))
}

/// A row whose send failed, with the error kept typed until it is written to the
/// row's `last_error` column.
pub struct SendFailure {
    pub id: Uuid,
    pub error: rdkafka::error::KafkaError,
    /// The broker rejected the record itself; counts toward `max_send_attempts`.
    pub permanent: bool,
    /// Relays with sequence numbers: the record was not written, and the row gets a
    /// new number at its next claim (`outbox/sequence.rs`, rule 4).
    pub renumber: bool,
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

/// A listener that never fires, for backends without notifications (SQLite, MySQL).
#[cfg(any(feature = "sqlite", feature = "mysql"))]
#[derive(Debug)]
pub enum NoListener {}

#[cfg(any(feature = "sqlite", feature = "mysql"))]
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
    /// What a relay instance holds while it publishes: its lock(s), and on PostgreSQL
    /// the session they belong to.
    type RelayLease: Send;
    /// Whether several relay instances can share a table by shards.
    const SHARDED_RELAY: bool;
    /// Whether the relay can number rows (`OutboxRelayBuilder::sequence_numbers`).
    const SEQUENCED_RELAY: bool = false;

    /// Inserts `row` with `sql` ([`super::sql::outbox_insert`]).
    fn insert_outbox<'a>(
        conn: &'a mut Self::Connection,
        sql: &'a str,
        row: NewOutboxRow<'a>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// The relay's statements for `table`; delivered rows are deleted at once when
    /// `delete_on_delivery`; `shards` > 1 splits the rows among relay instances;
    /// `sequenced` numbers the rows (only where [`OutboxStore::SEQUENCED_RELAY`]).
    fn relay_sql(table: &str, delete_on_delivery: bool, shards: u32, sequenced: bool) -> Self::RelaySql;

    /// Takes the relay's lock on the table (sharded: a member slot and this member's
    /// share of the shards); `Ok(None)` when another instance holds it.
    fn lease_relay<'a>(
        pool: &'a Pool<Self>,
        sql: &'a Self::RelaySql,
    ) -> impl Future<Output = Result<Option<Self::RelayLease>, Error>> + Send + 'a;

    /// Sharded relays: divides the shards again among the members alive now, releasing
    /// the shards this member no longer owns and taking the free ones it should own.
    /// Called with no batch in flight. Returns the shards held (unsharded: `[0]`).
    fn rebalance_relay<'a>(
        lease: &'a mut Self::RelayLease,
        sql: &'a Self::RelaySql,
    ) -> impl Future<Output = Result<Vec<u32>, Error>> + Send + 'a;

    /// Gives the lease up (unlocks); a lease dropped without this is released when its
    /// connection closes.
    fn release_relay(lease: Self::RelayLease) -> impl Future<Output = ()> + Send;

    /// Up to `limit` undelivered rows of the lease, in `seq` order, leaving out the rows
    /// whose `seq` is in `in_flight` (claimed and not yet settled).
    fn claim_outbox<'a>(
        pool: &'a Pool<Self>,
        lease: &'a mut Self::RelayLease,
        sql: &'a Self::RelaySql,
        limit: i64,
        in_flight: &'a [i64],
    ) -> impl Future<Output = Result<Vec<OutboxRow>, Error>> + Send + 'a;

    /// Records what became of claimed rows: marks (or deletes) the delivered ones and
    /// counts an attempt on the failed ones (parking those the broker rejected
    /// `max_attempts` times), in one transaction, on a pooled connection: marking a row
    /// the broker has acknowledged is right whoever holds the lease, so the relay settles
    /// one batch while it claims the next on the lease's session.
    fn settle_outbox<'a>(
        pool: &'a Pool<Self>,
        sql: &'a Self::RelaySql,
        published: &'a Published,
        max_attempts: i32,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a;

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

#[cfg(test)]
mod tests {
    use super::key_hash;

    /// The hash maps keys to the partitions the relay's producer (`murmur2_random`)
    /// sends them to: checked on librdkafka's mock cluster.
    #[tokio::test]
    async fn key_hash_picks_the_producers_partition() {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("partitioner", "murmur2_random")
            .create()
            .unwrap();
        let keys: Vec<String> =
            (0..300).map(|i| format!("seat-{i}")).chain(["a", "ab", "abc", "日本語キー"].map(String::from)).collect();
        for partitions in [7, 32] {
            let topic = format!("hash-{partitions}");
            cluster.create_topic(&topic, partitions, 1).unwrap();
            for key in &keys {
                let delivery = producer
                    .send(FutureRecord::<str, [u8]>::to(&topic).key(key), std::time::Duration::from_secs(10))
                    .await
                    .unwrap();
                assert_eq!(
                    key_hash(key.as_bytes()) % partitions,
                    delivery.partition,
                    "key {key:?}, {partitions} partitions"
                );
            }
        }
        assert!(keys.iter().all(|k| key_hash(k.as_bytes()) >= 0));
    }
}
