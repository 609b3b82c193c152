//! The envelope: the `rk-*` headers every record of the relay carries, written by
//! [`Envelope::to_headers`] (relay) and read by [`Envelope::from_headers`] (listener
//! container, re-driver), plus the dead-letter headers ([`DeadLetterInfo`]).
//!
//! Header names and encodings are in [`headers`].

pub(crate) mod dead_letter;
pub mod headers;
mod identity;

use rdkafka::message::{Header, Headers, OwnedHeaders};
use uuid::Uuid;

pub use dead_letter::{DeadLetterInfo, DeadLetterReason, TimestampType};
pub use identity::{Identity, IdentityError, IdentityFn, IdentitySource, RecordView};

/// What the envelope headers of a record say.
///
/// ```
/// use reliable_kafka::Envelope;
/// let env = Envelope::new(uuid::Uuid::now_v7(), "OrderPlaced", 2).with_content_type("application/json");
/// let decoded = Envelope::from_headers(Some(&env.to_headers())).unwrap();
/// assert_eq!(decoded, env);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope {
    /// [`headers::MESSAGE_ID`]: the id the idempotent consumer deduplicates on.
    pub message_id: Uuid,
    /// [`headers::EVENT_TYPE`].
    pub event_type: String,
    /// [`headers::SCHEMA_VERSION`]; 1 when the header is absent.
    pub schema_version: u32,
    /// [`headers::PRODUCED_AT`]: outbox insert time, ms since the Unix epoch.
    pub produced_at_ms: Option<i64>,
    /// [`headers::CONTENT_TYPE`].
    pub content_type: Option<String>,
    /// [`headers::TRACEPARENT`] (W3C Trace Context).
    pub traceparent: Option<String>,
}

/// Why a record's envelope could not be read; the listener container dead-letters
/// such a record with reason `invalid-headers` and this error as the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// A required header is absent (or has a null value).
    #[error("header `{header}` is missing")]
    Missing {
        /// The header name.
        header: &'static str,
    },
    /// A header value is not UTF-8.
    #[error("header `{header}` is not UTF-8")]
    NotUtf8 {
        /// The header name.
        header: &'static str,
    },
    /// The message id is not a UUID.
    #[error("header `{}` is not a UUID: {value:?}", headers::MESSAGE_ID)]
    InvalidMessageId {
        /// The value found.
        value: String,
        /// The parse error.
        #[source]
        source: uuid::Error,
    },
    /// The schema version is not a decimal `u32`.
    #[error("header `{}` is not a u32: {value:?}", headers::SCHEMA_VERSION)]
    InvalidSchemaVersion {
        /// The value found.
        value: String,
    },
}

impl Envelope {
    /// An envelope with a message id, event type and schema version; the optional
    /// headers unset.
    pub fn new(message_id: Uuid, event_type: impl Into<String>, schema_version: u32) -> Self {
        Envelope {
            message_id,
            event_type: event_type.into(),
            schema_version,
            produced_at_ms: None,
            content_type: None,
            traceparent: None,
        }
    }

    /// Sets [`Envelope::produced_at_ms`].
    pub fn with_produced_at_ms(mut self, ms: i64) -> Self {
        self.produced_at_ms = Some(ms);
        self
    }

    /// Sets [`Envelope::content_type`].
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Sets [`Envelope::traceparent`].
    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// Reads the envelope of a record's headers. When a header occurs more than once,
    /// the first one counts.
    ///
    /// # Errors
    /// [`EnvelopeError`] naming the header that is missing or malformed: the message id
    /// and the event type are required.
    pub fn from_headers<H: Headers>(h: Option<&H>) -> Result<Envelope, EnvelopeError> {
        let text = |header: &'static str| -> Result<Option<&str>, EnvelopeError> {
            find(h, header).map(|v| std::str::from_utf8(v).map_err(|_| EnvelopeError::NotUtf8 { header })).transpose()
        };
        let required = |header: &'static str| text(header)?.ok_or(EnvelopeError::Missing { header });
        let id = required(headers::MESSAGE_ID)?;
        let message_id =
            Uuid::parse_str(id).map_err(|source| EnvelopeError::InvalidMessageId { value: id.to_owned(), source })?;
        let event_type = required(headers::EVENT_TYPE)?.to_owned();
        let schema_version = match text(headers::SCHEMA_VERSION)? {
            Some(v) => v.parse().map_err(|_| EnvelopeError::InvalidSchemaVersion { value: v.to_owned() })?,
            None => 1,
        };
        Ok(Envelope {
            message_id,
            event_type,
            schema_version,
            // Informational headers: a malformed one is left out, never fatal.
            produced_at_ms: text(headers::PRODUCED_AT).ok().flatten().and_then(|v| v.parse().ok()),
            content_type: text(headers::CONTENT_TYPE).ok().flatten().map(str::to_owned),
            traceparent: text(headers::TRACEPARENT).ok().flatten().map(str::to_owned),
        })
    }

    /// The envelope as record headers, in the order [`headers`] lists them.
    pub fn to_headers(&self) -> OwnedHeaders {
        self.append_to(OwnedHeaders::new_with_capacity(6))
    }

    /// Appends the envelope headers to `h`.
    pub(crate) fn append_to(&self, h: OwnedHeaders) -> OwnedHeaders {
        let mut id = Uuid::encode_buffer();
        let id: &str = self.message_id.hyphenated().encode_lower(&mut id);
        let version = self.schema_version.to_string();
        let mut h = h
            .insert(Header { key: headers::MESSAGE_ID, value: Some(id) })
            .insert(Header { key: headers::EVENT_TYPE, value: Some(&self.event_type) })
            .insert(Header { key: headers::SCHEMA_VERSION, value: Some(&version) });
        if let Some(ms) = self.produced_at_ms {
            h = h.insert(Header { key: headers::PRODUCED_AT, value: Some(&ms.to_string()) });
        }
        if let Some(ct) = &self.content_type {
            h = h.insert(Header { key: headers::CONTENT_TYPE, value: Some(ct) });
        }
        if let Some(tp) = &self.traceparent {
            h = h.insert(Header { key: headers::TRACEPARENT, value: Some(tp) });
        }
        h
    }
}

/// The value of the first header named `name`, if any and not null.
pub(crate) fn find<'a, H: Headers>(h: Option<&'a H>, name: &str) -> Option<&'a [u8]> {
    h?.iter().find(|x| x.key == name).and_then(|x| x.value)
}

/// The value of the last header named `name` (Spring Kafka's rule for headers a record
/// collects on each dead-lettering), if any and not null.
pub(crate) fn find_last<'a, H: Headers>(h: Option<&'a H>, name: &str) -> Option<&'a [u8]> {
    h?.iter().filter(|x| x.key == name).last().and_then(|x| x.value)
}

/// The headers as owned headers, with room for `extra` more.
pub(crate) fn copy_headers<H: Headers>(headers: &H, extra: usize) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(headers.count() + extra);
    for h in headers.iter() {
        out = out.insert(Header { key: h.key, value: h.value });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let none: Option<&OwnedHeaders> = None;
        assert_eq!(Envelope::from_headers(none), Err(EnvelopeError::Missing { header: headers::MESSAGE_ID }));
        let h = OwnedHeaders::new()
            .insert(Header { key: headers::MESSAGE_ID, value: Some("not-a-uuid") })
            .insert(Header { key: headers::EVENT_TYPE, value: Some("E") });
        let e = Envelope::from_headers(Some(&h)).unwrap_err();
        assert!(matches!(e, EnvelopeError::InvalidMessageId { ref value, .. } if value == "not-a-uuid"), "{e}");
        let h = Envelope::new(Uuid::now_v7(), "E", 1)
            .to_headers()
            .insert(Header { key: headers::SCHEMA_VERSION, value: Some("x") });
        // The first occurrence counts: the valid one written by `to_headers`.
        assert!(Envelope::from_headers(Some(&h)).is_ok());
        // A malformed informational header is left out, not fatal.
        let h = Envelope::new(Uuid::now_v7(), "E", 1)
            .to_headers()
            .insert(Header { key: headers::CONTENT_TYPE, value: Some(&[0xff_u8, 0xfe][..]) });
        assert_eq!(Envelope::from_headers(Some(&h)).unwrap().content_type, None);
    }

    proptest! {
        #[test]
        fn round_trip(
            event_type in "[A-Za-z]{1,20}", version in any::<u32>(), at in proptest::option::of(any::<i64>()),
            ct in proptest::option::of("[a-z/]{1,20}"), tp in proptest::option::of("[0-9a-f-]{1,55}"),
        ) {
            let env = Envelope {
                message_id: Uuid::now_v7(), event_type, schema_version: version, produced_at_ms: at,
                content_type: ct, traceparent: tp,
            };
            prop_assert_eq!(Envelope::from_headers(Some(&env.to_headers())), Ok(env));
        }
    }
}
