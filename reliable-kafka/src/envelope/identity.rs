//! [`IdentitySource`]: where the listener container reads a record's message id (what
//! the idempotent consumer deduplicates on) and its event type (what a topic's route
//! table dispatches on), for records this crate's relay wrote and for records it did
//! not: CloudEvents, Debezium's outbox event router, any other producer.

use std::fmt;
use std::sync::Arc;

use rdkafka::message::{Headers, Message};
use uuid::Uuid;

use super::{find, headers, Envelope, EnvelopeError};
use crate::BoxError;

/// A record's identity: the message id and, when the source has one, the event type.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Identity {
    /// The id the idempotent consumer deduplicates on, per consumer group.
    pub message_id: Uuid,
    /// The event type the route table dispatches on; `None` when the source has none
    /// (the topic's only handler then takes the record).
    pub event_type: Option<String>,
}

impl Identity {
    /// An identity without an event type.
    pub fn new(message_id: Uuid) -> Self {
        Identity { message_id, event_type: None }
    }

    /// Sets the event type.
    pub fn with_event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// A message id for an id that is text: the UUID itself when `id` is one (in any
    /// of its text forms), else the name-based UUID (version 5) of `scope` and `id` in
    /// this crate's namespace, so the same `(scope, id)` always maps to the same UUID
    /// and different scopes never collide. CloudEvents use the `source` as the scope.
    pub fn message_id_from_text(scope: &str, id: &str) -> Uuid {
        let id = id.trim_matches('"');
        Uuid::parse_str(id).unwrap_or_else(|_| {
            let mut name = Vec::with_capacity(scope.len() + id.len() + 1);
            name.extend_from_slice(scope.as_bytes());
            name.push(b'\n');
            name.extend_from_slice(id.as_bytes());
            Uuid::new_v5(&NAMESPACE, &name)
        })
    }
}

/// What the container reads of a record besides its payload.
#[derive(Debug)]
pub(crate) struct Facts {
    pub identity: Identity,
    pub schema_version: u32,
    pub produced_at_ms: Option<i64>,
    pub traceparent: Option<String>,
}

/// Namespace of the name-based message ids (a fixed, random UUID).
const NAMESPACE: Uuid = Uuid::from_u128(0x5c2b_8f0e_4d1a_4c6b_9a37_2e8f_61d0_b4a5);

/// What a user function of [`IdentitySource::custom`] sees of a record.
#[derive(Debug)]
pub struct RecordView<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

impl<'a> RecordView<'a> {
    pub(crate) fn of<M: Message>(msg: &'a M) -> Self {
        let headers = msg.headers().map(|h| h.iter().map(|x| (x.key, x.value)).collect()).unwrap_or_default();
        RecordView {
            topic: msg.topic(),
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key(),
            payload: msg.payload(),
            headers,
        }
    }

    /// A view of a record's parts, for unit tests of an identity function.
    pub fn new(
        topic: &'a str,
        partition: i32,
        offset: i64,
        key: Option<&'a [u8]>,
        payload: Option<&'a [u8]>,
        headers: Vec<(&'a str, Option<&'a [u8]>)>,
    ) -> Self {
        RecordView { topic, partition, offset, key, payload, headers }
    }

    /// The topic.
    pub fn topic(&self) -> &'a str {
        self.topic
    }
    /// The partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }
    /// The offset.
    pub fn offset(&self) -> i64 {
        self.offset
    }
    /// The key bytes.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.key
    }
    /// The value bytes.
    pub fn payload(&self) -> Option<&'a [u8]> {
        self.payload
    }
    /// The value of the first header named `name`, if present and not null.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers.iter().find(|(k, _)| *k == name).and_then(|(_, v)| *v)
    }
    /// [`RecordView::header`] as UTF-8 text.
    pub fn header_str(&self, name: &str) -> Option<&'a str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
    /// All headers, in record order.
    pub fn headers(&self) -> &[(&'a str, Option<&'a [u8]>)] {
        &self.headers
    }
}

/// Why a record's identity could not be read; the container dead-letters the record
/// with reason `invalid-headers` and this error as the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The `rk-*` envelope is missing or malformed.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// A header the source needs is absent (or null).
    #[error("header `{header}` is missing")]
    MissingHeader {
        /// The header name.
        header: String,
    },
    /// A header the source needs is not UTF-8.
    #[error("header `{header}` is not UTF-8")]
    NotUtf8 {
        /// The header name.
        header: String,
    },
    /// `ce_specversion` is not a version this crate reads.
    #[error("CloudEvents specversion {found:?} is not supported (expected \"1.0\")")]
    UnsupportedSpecVersion {
        /// The value found.
        found: String,
    },
    /// The record is a CloudEvent in structured content mode
    /// (`content-type: application/cloudevents+json`); only binary mode is read.
    #[error("CloudEvents structured content mode is not supported; produce in binary mode")]
    StructuredMode,
    /// A user identity function failed.
    #[error("identity function failed")]
    Custom(#[source] BoxError),
}

impl IdentityError {
    /// The Rust path written to `kafka_dlt-exception-fqcn`.
    pub(crate) fn path(&self) -> &'static str {
        match self {
            IdentityError::Envelope(_) => "reliable_kafka::EnvelopeError",
            _ => "reliable_kafka::IdentityError",
        }
    }
}

/// The user function of [`IdentitySource::custom`].
pub type IdentityFn = dyn Fn(&RecordView<'_>) -> Result<Identity, IdentityError> + Send + Sync;

/// Where a record's message id and event type come from, set per container
/// (`ListenerContainerBuilder::identity`) or per handler (`HandlerOptions::identity`,
/// `#[event_handler(identity = …)]`); all handlers of one topic share one source.
///
/// | source | message id | event type |
/// |---|---|---|
/// | [`envelope`](IdentitySource::envelope) (default) | `rk-message-id` | `rk-event-type` |
/// | [`cloud_events`](IdentitySource::cloud_events) | `ce_id` within `ce_source` | `ce_type` |
/// | [`debezium`](IdentitySource::debezium) | header `id` | header `eventType`, or the one configured |
/// | [`custom`](IdentitySource::custom) | the function's | the function's |
/// | [`topic_partition_offset`](IdentitySource::topic_partition_offset) | topic, partition, offset | none |
///
/// Text ids that are not UUIDs are mapped to UUIDs with
/// [`Identity::message_id_from_text`]. Whatever the source, the schema version is read
/// from `rk-schema-version` (1 when absent), the produced-at time from `rk-produced-at`
/// and the trace context from `traceparent`, when the record has them.
#[derive(Clone)]
pub struct IdentitySource(Kind);

#[derive(Clone)]
enum Kind {
    Envelope,
    CloudEvents,
    Debezium { type_header: Option<String> },
    Custom(Arc<IdentityFn>),
    TopicPartitionOffset,
}

impl fmt::Debug for IdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Envelope => f.write_str("IdentitySource::envelope()"),
            Kind::CloudEvents => f.write_str("IdentitySource::cloud_events()"),
            Kind::Debezium { type_header: Some(h) } => write!(f, "IdentitySource::debezium_type_header({h:?})"),
            Kind::Debezium { type_header: None } => f.write_str("IdentitySource::debezium_untyped()"),
            Kind::Custom(_) => f.write_str("IdentitySource::custom(..)"),
            Kind::TopicPartitionOffset => f.write_str("IdentitySource::topic_partition_offset()"),
        }
    }
}

impl Default for IdentitySource {
    fn default() -> Self {
        IdentitySource::envelope()
    }
}

impl IdentitySource {
    /// This crate's `rk-*` envelope, written by [`crate::OutboxRelay`] (the default).
    /// A record without `rk-message-id` and `rk-event-type` is dead-lettered as
    /// `invalid-headers`.
    pub fn envelope() -> Self {
        IdentitySource(Kind::Envelope)
    }

    /// CloudEvents 1.0 in the Kafka protocol binding's binary content mode, as
    /// `OutboxRelayBuilder::cloud_events` writes it and CloudEvents SDKs produce it:
    /// the message id is `ce_id` within `ce_source` (the UUID itself when `ce_id` is
    /// one), the event type `ce_type`. `ce_specversion` must be `1.0`; a structured-mode
    /// record is dead-lettered with [`IdentityError::StructuredMode`].
    pub fn cloud_events() -> Self {
        IdentitySource(Kind::CloudEvents)
    }

    /// Debezium's outbox event router: the message id from header `id` (the outbox
    /// row's id; one that is not a UUID is scoped by the topic), the event type from header `eventType`, which the router writes when
    /// configured with `table.fields.additional.placement=type:header:eventType` (when
    /// absent, the topic's only handler takes the record). The key is the
    /// `aggregateid`, as the router sets it.
    pub fn debezium() -> Self {
        Self::debezium_type_header(headers::DEBEZIUM_EVENT_TYPE)
    }

    /// [`IdentitySource::debezium`] with the event type from header `header`.
    pub fn debezium_type_header(header: impl Into<String>) -> Self {
        IdentitySource(Kind::Debezium { type_header: Some(header.into()) })
    }

    /// [`IdentitySource::debezium`] for routers that place no event type: every record
    /// of the topic goes to its one handler.
    pub fn debezium_untyped() -> Self {
        IdentitySource(Kind::Debezium { type_header: None })
    }

    /// A function over the record's key, headers and payload. Sources are compared
    /// by value when handlers of one topic are registered, and two `custom` sources
    /// are the same only when one is a clone of the other: register one value (clone
    /// it, or keep it in a `static`) on every handler of a topic, or set it on the
    /// container.
    ///
    /// ```
    /// use reliable_kafka::{Identity, IdentityError, IdentitySource};
    /// // A producer that puts an order number in the key and the type in `kind`.
    /// let source = IdentitySource::custom(|r| {
    ///     let key = r.key().ok_or_else(|| IdentityError::Custom("no key".into()))?;
    ///     let id = Identity::message_id_from_text("orders", &String::from_utf8_lossy(key));
    ///     Ok(Identity::new(id).with_event_type(r.header_str("kind").unwrap_or("OrderPlaced")))
    /// });
    /// # let _ = source;
    /// ```
    pub fn custom<F>(f: F) -> Self
    where
        F: Fn(&RecordView<'_>) -> Result<Identity, IdentityError> + Send + Sync + 'static,
    {
        IdentitySource(Kind::Custom(Arc::new(f)))
    }

    /// The record's topic, partition and offset as its identity. This protects only
    /// against **redelivery** of the same record (a crash before the offset commit, a
    /// rebalance): a producer retry that wrote the record twice, or a re-drive from a
    /// dead-letter topic, lands at a new offset and runs again. No event type: the
    /// topic must have one handler (`build()` checks).
    pub fn topic_partition_offset() -> Self {
        IdentitySource(Kind::TopicPartitionOffset)
    }

    /// What a record says: its identity, then the facts every source reads from the
    /// same headers (`rk-schema-version`, strictly; `rk-produced-at`, or `ce_time` for
    /// CloudEvents, and `traceparent`, leniently: a malformed one is left out).
    pub(crate) fn facts<M: Message>(&self, msg: &M) -> Result<Facts, IdentityError> {
        let h = msg.headers();
        if let Kind::Envelope = self.0 {
            let env = Envelope::from_headers(h)?;
            return Ok(Facts {
                identity: Identity { message_id: env.message_id, event_type: Some(env.event_type) },
                schema_version: env.schema_version,
                produced_at_ms: env.produced_at_ms,
                traceparent: env.traceparent,
            });
        }
        let identity = self.identify(msg)?;
        let lenient = |name| text(h, name).ok().flatten();
        let schema_version = match lenient(headers::SCHEMA_VERSION) {
            Some(v) => v.parse().map_err(|_| EnvelopeError::InvalidSchemaVersion { value: v.to_owned() })?,
            None => 1,
        };
        let produced_at_ms = lenient(headers::PRODUCED_AT).and_then(|v| v.parse().ok()).or_else(|| {
            let time = lenient(headers::CE_TIME).filter(|_| matches!(self.0, Kind::CloudEvents))?;
            chrono::DateTime::parse_from_rfc3339(time).ok().map(|t| t.timestamp_millis())
        });
        Ok(Facts {
            identity,
            schema_version,
            produced_at_ms,
            traceparent: lenient(headers::TRACEPARENT).map(str::to_owned),
        })
    }

    /// Whether records of this source can carry an event type (several handlers per
    /// topic need one).
    pub(crate) fn has_event_types(&self) -> bool {
        !matches!(self.0, Kind::TopicPartitionOffset | Kind::Debezium { type_header: None })
    }

    /// Whether two sources are the same (a custom one: the same function value).
    pub(crate) fn same_as(&self, other: &IdentitySource) -> bool {
        match (&self.0, &other.0) {
            (Kind::Custom(a), Kind::Custom(b)) => Arc::ptr_eq(a, b),
            (Kind::Debezium { type_header: a }, Kind::Debezium { type_header: b }) => a == b,
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }

    /// The identity of `msg`.
    ///
    /// # Errors
    /// [`IdentityError`] naming what is missing or malformed.
    pub fn identify<M: Message>(&self, msg: &M) -> Result<Identity, IdentityError> {
        let h = msg.headers();
        match &self.0 {
            Kind::Envelope => {
                let env = Envelope::from_headers(h)?;
                Ok(Identity { message_id: env.message_id, event_type: Some(env.event_type) })
            }
            Kind::CloudEvents => {
                if text(h, headers::CONTENT_TYPE)?.is_some_and(|ct| ct.starts_with("application/cloudevents")) {
                    return Err(IdentityError::StructuredMode);
                }
                let version = required(h, headers::CE_SPECVERSION)?;
                if version != headers::CE_SPEC_VERSION {
                    return Err(IdentityError::UnsupportedSpecVersion { found: version.to_owned() });
                }
                let id = required(h, headers::CE_ID)?;
                let source = required(h, headers::CE_SOURCE)?;
                let event_type = required(h, headers::CE_TYPE)?;
                Ok(Identity::new(Identity::message_id_from_text(source, id)).with_event_type(event_type))
            }
            Kind::Debezium { type_header } => {
                let id = required(h, headers::DEBEZIUM_ID)?;
                // Ids are unique per outbox table, and a table's events go to its topics.
                let mut identity = Identity::new(Identity::message_id_from_text(msg.topic(), id));
                if let Some(header) = type_header {
                    identity.event_type = text(h, header)?.map(|t| t.trim_matches('"').to_owned());
                }
                Ok(identity)
            }
            Kind::Custom(f) => f(&RecordView::of(msg)),
            Kind::TopicPartitionOffset => {
                let name = format!("{}/{}/{}", msg.topic(), msg.partition(), msg.offset());
                Ok(Identity::new(Uuid::new_v5(&NAMESPACE, name.as_bytes())))
            }
        }
    }
}

fn text<'a, H: Headers>(h: Option<&'a H>, header: &str) -> Result<Option<&'a str>, IdentityError> {
    find(h, header)
        .map(|v| std::str::from_utf8(v).map_err(|_| IdentityError::NotUtf8 { header: header.to_owned() }))
        .transpose()
}

fn required<'a, H: Headers>(h: Option<&'a H>, header: &str) -> Result<&'a str, IdentityError> {
    text(h, header)?.ok_or_else(|| IdentityError::MissingHeader { header: header.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    fn record(headers: &[(&str, &str)]) -> OwnedMessage {
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(Header { key: k, value: Some(*v) });
        }
        OwnedMessage::new(
            Some(b"{}".to_vec()),
            Some(b"k".to_vec()),
            "t".into(),
            Timestamp::NotAvailable,
            3,
            42,
            Some(h),
        )
    }

    #[test]
    fn cloud_events_binary_mode() {
        let ce = |id: &str| {
            record(&[
                ("ce_specversion", "1.0"),
                ("ce_id", id),
                ("ce_source", "/orders"),
                ("ce_type", "com.example.order.placed"),
            ])
        };
        let uuid = Uuid::now_v7();
        let got = IdentitySource::cloud_events().identify(&ce(&uuid.to_string())).unwrap();
        assert_eq!(got, Identity::new(uuid).with_event_type("com.example.order.placed"));
        // A text id maps to the same UUID every time, and differs per source.
        let a = IdentitySource::cloud_events().identify(&ce("A-1")).unwrap().message_id;
        assert_eq!(a, IdentitySource::cloud_events().identify(&ce("A-1")).unwrap().message_id);
        assert_ne!(a, Identity::message_id_from_text("/billing", "A-1"));
        assert_eq!(a, Identity::message_id_from_text("/orders", "A-1"));

        let no_type = record(&[("ce_specversion", "1.0"), ("ce_id", "1"), ("ce_source", "/s")]);
        let e = IdentitySource::cloud_events().identify(&no_type).unwrap_err();
        assert!(matches!(&e, IdentityError::MissingHeader { header } if header == "ce_type"), "{e}");
        let v2 = record(&[("ce_specversion", "2.0"), ("ce_id", "1"), ("ce_source", "/s"), ("ce_type", "x")]);
        assert!(matches!(
            IdentitySource::cloud_events().identify(&v2),
            Err(IdentityError::UnsupportedSpecVersion { .. })
        ));
        let structured = record(&[("content-type", "application/cloudevents+json")]);
        assert!(matches!(IdentitySource::cloud_events().identify(&structured), Err(IdentityError::StructuredMode)));
    }

    #[test]
    fn debezium_router_headers() {
        let id = Uuid::new_v4();
        let r = record(&[("id", &id.to_string()), ("eventType", "OrderCreated")]);
        assert_eq!(IdentitySource::debezium().identify(&r).unwrap(), Identity::new(id).with_event_type("OrderCreated"));
        // JSON-quoted header values (a JSON header converter) are read too.
        let r = record(&[("id", &format!("\"{id}\"")), ("kind", "\"OrderShipped\"")]);
        let got = IdentitySource::debezium_type_header("kind").identify(&r).unwrap();
        assert_eq!(got, Identity::new(id).with_event_type("OrderShipped"));
        // No type header: no event type, not an error.
        let r = record(&[("id", "17")]);
        assert_eq!(IdentitySource::debezium().identify(&r).unwrap().event_type, None);
        let e = IdentitySource::debezium().identify(&record(&[])).unwrap_err();
        assert!(matches!(&e, IdentityError::MissingHeader { header } if header == "id"), "{e}");
    }

    #[test]
    fn offsets_custom_and_envelope() {
        let r = record(&[]);
        let a = IdentitySource::topic_partition_offset().identify(&r).unwrap();
        assert_eq!(a.event_type, None);
        let other = OwnedMessage::new(None, None, "t".into(), Timestamp::NotAvailable, 3, 43, None);
        assert_ne!(a.message_id, IdentitySource::topic_partition_offset().identify(&other).unwrap().message_id);

        let custom = IdentitySource::custom(|r| {
            let key = r.key().ok_or_else(|| IdentityError::Custom("no key".into()))?;
            Ok(Identity::new(Identity::message_id_from_text(r.topic(), &String::from_utf8_lossy(key)))
                .with_event_type("K"))
        });
        assert_eq!(
            custom.identify(&r).unwrap(),
            Identity::new(Identity::message_id_from_text("t", "k")).with_event_type("K")
        );
        assert!(matches!(custom.identify(&other), Err(IdentityError::Custom(_))));
        assert!(custom.same_as(&custom.clone()));
        assert!(!custom.same_as(&IdentitySource::custom(|_| Err(IdentityError::StructuredMode))));

        let e = IdentitySource::envelope().identify(&r).unwrap_err();
        assert!(matches!(e, IdentityError::Envelope(EnvelopeError::Missing { .. })));
        assert_eq!(e.path(), "reliable_kafka::EnvelopeError");
    }
}
