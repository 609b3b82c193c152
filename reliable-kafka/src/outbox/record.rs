//! The Kafka record of an outbox row, and which identity headers it carries
//! ([`HeaderFormat`]).

use rdkafka::message::{Header, OwnedHeaders};

use crate::kafka::OutRecord;
use crate::store::outbox::OutboxRow;
use crate::{headers, ConfigError, Envelope};

/// Which identity headers the relay writes on each record, besides the row's own
/// extra headers (see `OutboxRelayBuilder::header_format`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderFormat {
    /// This crate's envelope: `rk-message-id`, `rk-event-type`, `rk-schema-version`,
    /// `rk-produced-at` and `content-type` (the default; read by
    /// `IdentitySource::envelope`).
    #[default]
    Envelope,
    /// CloudEvents 1.0, Kafka protocol binding, binary content mode: `ce_specversion`
    /// (`1.0`), `ce_id` (the row id), `ce_source` (this value, a URI reference naming
    /// the producing service, e.g. `/concert/booking`), `ce_type` (the event type),
    /// `ce_time` (the insert time, RFC 3339) and `content-type`; plus
    /// `rk-schema-version` when the version is not 1. Read by
    /// `IdentitySource::cloud_events` and by any CloudEvents SDK.
    CloudEvents {
        /// The `ce_source` attribute.
        source: String,
    },
    /// Both sets, for topics read by consumers of either kind during a migration.
    EnvelopeAndCloudEvents {
        /// The `ce_source` attribute.
        source: String,
    },
}

impl HeaderFormat {
    /// CloudEvents binary mode with `ce_source` = `source`.
    pub fn cloud_events(source: impl Into<String>) -> Self {
        HeaderFormat::CloudEvents { source: source.into() }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match self {
            HeaderFormat::CloudEvents { source } | HeaderFormat::EnvelopeAndCloudEvents { source }
                if source.trim().is_empty() =>
            {
                Err(ConfigError::invalid("header_format", "the CloudEvents `source` must not be empty"))
            }
            _ => Ok(()),
        }
    }

    fn cloud_events_source(&self) -> Option<&str> {
        match self {
            HeaderFormat::Envelope => None,
            HeaderFormat::CloudEvents { source } | HeaderFormat::EnvelopeAndCloudEvents { source } => Some(source),
        }
    }
}

/// The record of an outbox row: the identity headers of `format`, then the row's extra
/// headers.
pub(crate) fn into_record(row: OutboxRow, format: &HeaderFormat) -> OutRecord {
    // A negative version (a row another tool wrote) is sent as u32::MAX, so that every
    // consumer dead-letters it as unsupported instead of taking it for version 0.
    let version = u32::try_from(row.schema_version).unwrap_or(u32::MAX);
    let extra = row.headers.as_object();
    let mut h = OwnedHeaders::new_with_capacity(12 + extra.map_or(0, |m| m.len()));
    if !matches!(format, HeaderFormat::CloudEvents { .. }) {
        let envelope = Envelope::new(row.id, row.event_type.as_str(), version)
            .with_produced_at_ms(row.created_at.timestamp_millis())
            .with_content_type(row.content_type.as_str());
        h = envelope.append_to(h);
    }
    if let Some(source) = format.cloud_events_source() {
        let mut id = uuid::Uuid::encode_buffer();
        let id: &str = row.id.hyphenated().encode_lower(&mut id);
        let time = row.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        h = h
            .insert(Header { key: headers::CE_SPECVERSION, value: Some(headers::CE_SPEC_VERSION) })
            .insert(Header { key: headers::CE_ID, value: Some(id) })
            .insert(Header { key: headers::CE_SOURCE, value: Some(source) })
            .insert(Header { key: headers::CE_TYPE, value: Some(&row.event_type) })
            .insert(Header { key: headers::CE_TIME, value: Some(&time) });
        if matches!(format, HeaderFormat::CloudEvents { .. }) {
            h = h.insert(Header { key: headers::CONTENT_TYPE, value: Some(&row.content_type) });
            if version != 1 {
                h = h.insert(Header { key: headers::SCHEMA_VERSION, value: Some(&version.to_string()) });
            }
        }
    }
    if let Some(n) = &row.sequence {
        h = h.insert(Header { key: headers::RELAY_SEQ, value: Some(n) });
    }
    // Extra headers: a JSON object of strings as written by `Outbox`; other values
    // (from other tools writing the table) are sent as their JSON text.
    for (k, v) in extra.into_iter().flatten() {
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        h = h.insert(Header { key: k, value: Some(&text) });
    }
    OutRecord { topic: row.topic, key: row.key.map(String::into_bytes), payload: Some(row.payload), headers: h }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Headers, Message, OwnedMessage, Timestamp};

    fn row(version: i32) -> OutboxRow {
        OutboxRow {
            seq: 1,
            id: uuid::Uuid::now_v7(),
            topic: "orders".into(),
            key: Some("o-1".into()),
            event_type: "OrderPlaced".into(),
            schema_version: version,
            payload: b"{}".to_vec(),
            content_type: "application/json".into(),
            headers: serde_json::json!({ "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" }),
            created_at: chrono::Utc::now(),
            sequence: None,
        }
    }

    fn as_message(r: OutRecord) -> OwnedMessage {
        OwnedMessage::new(r.payload, r.key, r.topic, Timestamp::NotAvailable, 0, 9, Some(r.headers))
    }

    #[test]
    fn each_format_is_read_back_by_its_identity_source() {
        use crate::IdentitySource;
        let envelope_row = row(1);
        let id = envelope_row.id;
        let msg = as_message(into_record(envelope_row, &HeaderFormat::Envelope));
        let facts = IdentitySource::envelope().facts(&msg).unwrap();
        assert_eq!((facts.identity.message_id, facts.identity.event_type.as_deref()), (id, Some("OrderPlaced")));
        assert!(IdentitySource::cloud_events().identify(&msg).is_err(), "no ce_* headers in envelope mode");

        let ce_row = row(3);
        let (id, at) = (ce_row.id, ce_row.created_at.timestamp_millis());
        let msg = as_message(into_record(ce_row, &HeaderFormat::cloud_events("/orders")));
        let facts = IdentitySource::cloud_events().facts(&msg).unwrap();
        assert_eq!((facts.identity.message_id, facts.identity.event_type.as_deref()), (id, Some("OrderPlaced")));
        assert_eq!((facts.schema_version, facts.produced_at_ms), (3, Some(at)));
        assert!(facts.traceparent.is_some());
        assert!(IdentitySource::envelope().identify(&msg).is_err(), "no rk-* envelope in CloudEvents mode");
        let names: Vec<&str> = msg.headers().unwrap().iter().map(|h| h.key).collect();
        assert_eq!(
            names,
            [
                "ce_specversion",
                "ce_id",
                "ce_source",
                "ce_type",
                "ce_time",
                "content-type",
                "rk-schema-version",
                "traceparent"
            ]
        );

        let both = as_message(into_record(row(1), &HeaderFormat::EnvelopeAndCloudEvents { source: "/o".into() }));
        let a = IdentitySource::envelope().identify(&both).unwrap();
        assert_eq!(a, IdentitySource::cloud_events().identify(&both).unwrap());
        assert!(HeaderFormat::cloud_events(" ").validate().unwrap_err().to_string().contains("header_format"));
    }
}
