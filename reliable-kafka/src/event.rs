//! Events, codecs and the metadata every record carries.

use serde::{de::DeserializeOwned, Serialize};

use crate::BoxError;

/// A domain event that can be written to the outbox and consumed by a handler.
///
/// Usually derived: `#[derive(Event)]` with
/// `#[event(topic = "payment.failed", key = payment_id, version = 1)]`.
///
/// ```
/// use reliable_kafka::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, Event)]
/// #[event(topic = "payment.failed", key = payment_id, version = 2)]
/// struct PaymentFailed {
///     payment_id: i64,
///     reason: String,
/// }
///
/// assert_eq!(PaymentFailed::TOPIC, "payment.failed");
/// assert_eq!(PaymentFailed::EVENT_TYPE, "PaymentFailed");
/// assert_eq!(PaymentFailed::SCHEMA_VERSION, 2);
/// let e = PaymentFailed { payment_id: 7, reason: "declined".into() };
/// assert_eq!(e.key().as_deref(), Some("7"));
/// ```
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Topic the outbox relay publishes this event to.
    const TOPIC: &'static str;
    /// Event type name written to the [`crate::headers::EVENT_TYPE`] header.
    const EVENT_TYPE: &'static str;
    /// Schema version written to [`crate::headers::SCHEMA_VERSION`]. A consumer rejects
    /// (dead-letters) records with a higher version than the one it was compiled with.
    const SCHEMA_VERSION: u32;
    /// Serialization of the payload.
    type Codec: Codec;

    /// Record key: records with the same key go to the same partition and are published
    /// and consumed in order. `None` lets the producer spread records over partitions.
    fn key(&self) -> Option<String>;
}

/// Error from a [`Codec`].
#[derive(Debug, thiserror::Error)]
#[error("{operation} failed")]
pub struct CodecError {
    operation: &'static str,
    #[source]
    source: BoxError,
}

impl CodecError {
    /// An encoding error with its cause.
    pub fn encode(source: impl Into<BoxError>) -> Self {
        CodecError { operation: "encoding", source: source.into() }
    }
    /// A decoding error with its cause.
    pub fn decode(source: impl Into<BoxError>) -> Self {
        CodecError { operation: "decoding", source: source.into() }
    }
}

/// Turns events into record payload bytes and back.
///
/// Chosen per event type through [`Event::Codec`]; the derive uses [`JsonCodec`]
/// unless `#[event(codec = path::ToCodec)]` names another.
pub trait Codec: Send + Sync + 'static {
    /// Media type written to the [`crate::headers::CONTENT_TYPE`] header.
    const CONTENT_TYPE: &'static str;

    /// Encodes `value`.
    ///
    /// # Errors
    /// [`CodecError`] when the value cannot be represented.
    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError>;

    /// Decodes `bytes`.
    ///
    /// # Errors
    /// [`CodecError`] when the bytes are not a valid `T`; the listener container
    /// dead-letters such a record at once (a poison pill).
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError>;
}

/// JSON via `serde_json`; the default codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    const CONTENT_TYPE: &'static str = "application/json";

    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(CodecError::encode)
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes).map_err(CodecError::decode)
    }
}
