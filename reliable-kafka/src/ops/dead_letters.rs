//! Dead-letter records as an operator reads them: [`DeadLetterRecord`] with every
//! Spring Kafka and `rk-` header decoded, [`DeadLetterFilter`] to select them, and
//! [`read_dead_letters`] to list a dead-letter topic without consuming it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::envelope::dead_letter::redrive_count;
use crate::{headers, DeadLetterInfo, DeadLetterReason, Error, KafkaConfig, ParkedMessage};

/// One record of a dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterRecord {
    /// The dead-letter topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// When it was dead-lettered (the record's timestamp), ms since the epoch.
    pub timestamp_ms: Option<i64>,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Payload bytes; `None` when dead-lettered without it (too large).
    pub payload: Option<Vec<u8>>,
    /// Every header, in record order, raw.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The `kafka_dlt-*` facts; `None` when the record is not a dead letter.
    pub info: Option<DeadLetterInfo>,
    /// [`headers::REDRIVE_COUNT`]: re-drives so far.
    pub redrive_count: u32,
}

impl DeadLetterRecord {
    /// The record of `msg`.
    pub fn from_message<M: Message>(msg: &M) -> Self {
        let h = msg.headers();
        DeadLetterRecord {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp_ms: msg.timestamp().to_millis(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec),
            headers: h
                .map(|h| h.iter().map(|x| (x.key.to_owned(), x.value.map(<[u8]>::to_vec))).collect())
                .unwrap_or_default(),
            info: h.and_then(DeadLetterInfo::from_headers),
            redrive_count: redrive_count(h),
        }
    }

    /// Why it was dead-lettered ([`headers::DLT_REASON`]), when a consumer of this
    /// crate did it.
    pub fn reason(&self) -> Option<DeadLetterReason> {
        self.info.as_ref().and_then(|i| i.reason)
    }

    /// The value of the last header `name` as text, if present and UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().rev().find(|(k, _)| k == name).and_then(|(_, v)| std::str::from_utf8(v.as_deref()?).ok())
    }

    /// The message id: `rk-message-id`, else CloudEvents' `ce_id`, else Debezium's `id`.
    pub fn message_id(&self) -> Option<&str> {
        [headers::MESSAGE_ID, headers::CE_ID, headers::DEBEZIUM_ID].iter().find_map(|h| self.header(h))
    }

    /// When it was dead-lettered.
    pub fn dead_lettered_at(&self) -> Option<DateTime<Utc>> {
        self.timestamp_ms.and_then(DateTime::from_timestamp_millis)
    }

    /// Every header with its value decoded as its writer encoded it: Spring Kafka's
    /// big-endian partition, offset and timestamp as numbers, text as text, anything
    /// else as hex (`0x…`); `null` for a null value.
    pub fn decoded_headers(&self) -> Vec<(String, String)> {
        self.headers.iter().map(|(k, v)| (k.clone(), decode_header(k, v.as_deref()))).collect()
    }

    /// The payload for a person: JSON when it parses, else UTF-8 text, else hex.
    pub fn payload_view(&self) -> PayloadView {
        PayloadView::of(self.payload.as_deref())
    }
}

/// A payload as shown to a person.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PayloadView {
    /// No payload.
    None,
    /// It parsed as JSON.
    Json(serde_json::Value),
    /// UTF-8 that is not JSON.
    Text(String),
    /// Binary, as lowercase hex.
    Hex(String),
}

impl PayloadView {
    /// The view of `payload`.
    pub fn of(payload: Option<&[u8]>) -> Self {
        match payload {
            None => PayloadView::None,
            Some(p) => match serde_json::from_slice(p) {
                Ok(v) => PayloadView::Json(v),
                Err(_) => match std::str::from_utf8(p) {
                    Ok(t) => PayloadView::Text(t.to_owned()),
                    Err(_) => PayloadView::Hex(hex(p)),
                },
            },
        }
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A header value decoded as its writer encoded it (see
/// [`DeadLetterRecord::decoded_headers`]).
pub fn decode_header(name: &str, value: Option<&[u8]>) -> String {
    let Some(v) = value else { return "null".to_owned() };
    let be = |v: &[u8]| match v.len() {
        4 => <[u8; 4]>::try_from(v).ok().map(|b| i32::from_be_bytes(b).to_string()),
        8 => <[u8; 8]>::try_from(v).ok().map(|b| i64::from_be_bytes(b).to_string()),
        _ => None,
    };
    let numeric = [headers::DLT_ORIGINAL_PARTITION, headers::DLT_ORIGINAL_OFFSET, headers::DLT_ORIGINAL_TIMESTAMP];
    if numeric.contains(&name) {
        if let Some(n) = be(v) {
            return n;
        }
    }
    match std::str::from_utf8(v) {
        Ok(t) if !t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => t.to_owned(),
        _ => format!("0x{}", hex(v)),
    }
}

/// Which dead letters or parked records an operation takes; every set condition must
/// hold (an empty filter takes all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterFilter {
    /// The dead-letter reason (`retries-exhausted`, …; for parked records also a
    /// word of the parking reason, e.g. `re-driven`).
    pub reason: Option<String>,
    /// Dead-lettered (parked records: parked) at or after.
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered (parked records: parked) before.
    pub until: Option<DateTime<Utc>>,
    /// Record key, exactly.
    pub key: Option<Vec<u8>>,
    /// Original topic (`kafka_dlt-original-topic`).
    pub original_topic: Option<String>,
    /// Parked records only: the one with this id (`rk_parked_messages.id`); a filter
    /// with it selects no dead letter on a topic.
    pub parked_id: Option<i64>,
}

impl DeadLetterFilter {
    /// Takes every record.
    pub fn new() -> Self {
        Self::default()
    }
    /// Only records dead-lettered for `reason`.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
    /// Only records from `since` on.
    pub fn since(mut self, since: DateTime<Utc>) -> Self {
        self.since = Some(since);
        self
    }
    /// Only records before `until`.
    pub fn until(mut self, until: DateTime<Utc>) -> Self {
        self.until = Some(until);
        self
    }
    /// Only records with this key.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }
    /// Only the parked record `id` (see [`DeadLetterFilter::parked_id`]).
    pub fn parked_id(mut self, id: i64) -> Self {
        self.parked_id = Some(id);
        self
    }
    /// Only records first consumed from `topic`.
    pub fn original_topic(mut self, topic: impl Into<String>) -> Self {
        self.original_topic = Some(topic.into());
        self
    }

    fn time_ok(&self, at: Option<DateTime<Utc>>) -> bool {
        match at {
            Some(t) => self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u),
            None => self.since.is_none() && self.until.is_none(),
        }
    }

    /// Whether `r` is selected.
    pub fn matches(&self, r: &DeadLetterRecord) -> bool {
        self.reason.as_deref().is_none_or(|want| r.reason().is_some_and(|x| x.as_str() == want))
            && self.time_ok(r.dead_lettered_at())
            && self.key.as_deref().is_none_or(|k| r.key.as_deref() == Some(k))
            && self.original_topic.as_deref().is_none_or(|t| r.info.as_ref().is_some_and(|i| i.original_topic == t))
            && self.parked_id.is_none()
    }

    /// Whether the parked record `p` is selected (its time is `parked_at`).
    pub fn matches_parked(&self, p: &ParkedMessage) -> bool {
        let dlt_reason = p
            .headers
            .as_array()
            .into_iter()
            .flatten()
            .filter(|h| h.get("key").and_then(|k| k.as_str()) == Some(headers::DLT_REASON))
            .filter_map(|h| h.get("value").and_then(|v| v.as_str()))
            .next_back();
        self.reason.as_deref().is_none_or(|want| dlt_reason == Some(want) || p.reason.contains(want))
            && self.time_ok(Some(p.parked_at))
            && self.key.as_deref().is_none_or(|k| p.key.as_deref() == Some(k))
            && self.original_topic.as_deref().is_none_or(|t| p.original_topic.as_deref() == Some(t))
            && self.parked_id.is_none_or(|id| p.id == id)
    }

    /// The conditions as text, for the audit row: `reason=… since=…`, or `all`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(id) = self.parked_id {
            parts.push(format!("id={id}"));
        }
        if let Some(r) = &self.reason {
            parts.push(format!("reason={r}"));
        }
        if let Some(s) = self.since {
            parts.push(format!("since={}", s.to_rfc3339()));
        }
        if let Some(u) = self.until {
            parts.push(format!("until={}", u.to_rfc3339()));
        }
        if let Some(k) = &self.key {
            parts.push(format!("key={}", String::from_utf8_lossy(k)));
        }
        if let Some(t) = &self.original_topic {
            parts.push(format!("original_topic={t}"));
        }
        if parts.is_empty() {
            "all".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

/// Reads dead-letter topic `topic` from its first offset to its end as it was when the
/// call started, without a consumer group (nothing is committed), and returns the
/// records `filter` selects, at most `limit`, in partition then offset order.
///
/// # Errors
/// [`Error::Kafka`] when the topic's metadata or watermarks cannot be read.
pub async fn read_dead_letters(
    kafka: &KafkaConfig,
    topic: &str,
    filter: &DeadLetterFilter,
    limit: usize,
) -> Result<Vec<DeadLetterRecord>, Error> {
    let consumer: StreamConsumer = kafka
        .consumer_config("rk-dead-letter-reader", &[("enable.partition.eof", "false")])
        .create()
        .map_err(Error::kafka("create dead-letter reader"))?;
    let consumer = std::sync::Arc::new(consumer);
    let planner = consumer.clone();
    let name = topic.to_owned();
    let spans =
        tokio::task::spawn_blocking(move || crate::redrive::plan(&planner, &[name], false)).await.map_err(|_| {
            Error::Kafka { operation: "plan dead-letter read", source: rdkafka::error::KafkaError::Canceled }
        })??;
    let mut out = Vec::new();
    let mut ends = std::collections::HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for s in &spans {
        tpl.add_partition_offset(&s.topic, s.partition, Offset::Offset(s.start))
            .map_err(Error::kafka("assign dead-letter partitions"))?;
        ends.insert(s.partition, s.end);
    }
    if !ends.is_empty() {
        consumer.assign(&tpl).map_err(Error::kafka("assign dead-letter partitions"))?;
    }
    drop(tpl);
    let mut by_partition: std::collections::BTreeMap<i32, Vec<DeadLetterRecord>> = Default::default();
    while !ends.is_empty() {
        let msg = match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "dead-letter reader error");
                continue;
            }
            Ok(Ok(m)) => m,
        };
        let Some(&end) = ends.get(&msg.partition()) else { continue };
        if msg.offset() < end {
            let r = DeadLetterRecord::from_message(&msg);
            if filter.matches(&r) {
                by_partition.entry(r.partition).or_default().push(r);
            }
        }
        if msg.offset() + 1 >= end {
            ends.remove(&msg.partition());
        }
    }
    let _ = consumer.unassign();
    crate::worker::close_within("dead-letter reader", crate::worker::CONSUMER_CLOSE_TIMEOUT, move || drop(consumer))
        .await;
    for (_, records) in by_partition {
        out.extend(records);
    }
    out.truncate(limit);
    Ok(out)
}
