//! Non-blocking retry topics ([`RetryTopics`]): naming and headers compatible with
//! Spring Kafka's `@RetryableTopic`.

use std::time::{Duration, Instant};

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use crate::envelope::find_last;
use crate::{headers, ConfigError};

/// Retry topics of a handler (`HandlerOptions::retry_topics`,
/// `#[event_handler(retry_topics = "1s, 10s, 1m")]`): non-blocking retries.
///
/// A record whose handler fails transiently is published to the first retry topic
/// and its partition moves on at once. The container consumes the retry topics too:
/// a record there waits until its due time (its partition paused, polling going on),
/// then goes to the same handler; a failure there publishes it to the next retry
/// topic, and after the last one to the dead-letter topic. Every topic gives a record
/// one attempt, so a handler with retry topics has `1 + delays` attempts and no
/// back-off (`build()` rejects a handler that sets both).
///
/// Names and headers follow Spring Kafka's retry topics, so a Spring consumer can
/// take over a retry topic and the reverse:
/// - topics `{topic}-retry-{delay in ms}` (Spring's default, suffixing with the delay
///   value), or `{topic}-retry-{index}` from 0 with [`RetryTopics::suffix_with_index`]
///   (Spring's `SUFFIX_WITH_INDEX_VALUE`; required when two delays are equal);
/// - `retry_topic-attempts`: the attempt the record is for (2 in the first retry
///   topic), a 4-byte big-endian integer;
/// - `retry_topic-backoff-timestamp`: when it is due, ms since the epoch, an 8-byte
///   big-endian integer (Spring reads it as a `BigInteger`);
/// - `retry_topic-original-timestamp`: the first record's timestamp, likewise;
/// - the `kafka_dlt-*` headers of the first failure (original topic, partition and
///   offset stay those of the source record, so a re-drive of its dead letter goes
///   back to the source topic) and the exception of the latest one.
///
/// The cost is ordering: a record that is retried falls behind the records of its
/// key that come after it. Use retry topics for records that are independent of each
/// other (notifications, e-mails), and the pause-and-poll back-off or key-blocking
/// retry where order matters. The retry topics must exist (see
/// [`RetryTopics::topics`]), with as many partitions as you like: a copy goes to the
/// partition of its key. Records due later never hold up records due earlier within
/// one retry topic, since each topic has one delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryTopics {
    pub(crate) delays: Vec<Duration>,
    by_index: bool,
}

/// At most this many retry topics per handler.
pub const MAX_RETRY_TOPICS: usize = 32;

impl RetryTopics {
    /// One retry topic per delay, in order.
    pub fn new(delays: impl IntoIterator<Item = Duration>) -> Self {
        RetryTopics { delays: delays.into_iter().collect(), by_index: false }
    }

    /// Parses `"1s, 10s, 1m"`: delays separated by commas, each a number with the unit
    /// `ms`, `s`, `m` or `h` (the `#[event_handler]` argument).
    ///
    /// # Errors
    /// [`ConfigError::InvalidValue`] naming `retry_topics` for an unreadable delay.
    pub fn parse(delays: &str) -> Result<Self, ConfigError> {
        let parse = |d: &str| -> Option<Duration> {
            let d = d.trim();
            let split = d.find(|c: char| !c.is_ascii_digit())?;
            let n: u64 = d[..split].parse().ok()?;
            let ms = match d[split..].trim() {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                _ => return None,
            };
            Some(Duration::from_millis(n.checked_mul(ms)?))
        };
        let delays = delays
            .split(',')
            .map(|d| {
                parse(d).ok_or_else(|| {
                    ConfigError::invalid(
                        "retry_topics",
                        format!("`{}` is not a delay like 500ms, 10s, 1m or 1h", d.trim()),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RetryTopics::new(delays))
    }

    /// Names the topics `{topic}-retry-0`, `-retry-1` …
    pub fn suffix_with_index(mut self) -> Self {
        self.by_index = true;
        self
    }

    /// The delays, in order.
    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// The retry topics of `topic`, in order.
    pub fn topics(&self, topic: &str) -> Vec<String> {
        self.delays
            .iter()
            .enumerate()
            .map(
                |(i, d)| {
                    if self.by_index {
                        format!("{topic}-retry-{i}")
                    } else {
                        format!("{topic}-retry-{}", d.as_millis())
                    }
                },
            )
            .collect()
    }

    pub(crate) fn validate(&self, topic: &str) -> Result<(), ConfigError> {
        let bad = |why: String| Err(ConfigError::invalid("retry_topics", format!("`{topic}`: {why}")));
        if self.delays.is_empty() || self.delays.len() > MAX_RETRY_TOPICS {
            return bad(format!("1..={MAX_RETRY_TOPICS} delays, not {}", self.delays.len()));
        }
        let names = self.topics(topic);
        if names.iter().enumerate().any(|(i, n)| names[..i].contains(n)) {
            return bad("two delays are equal, so their topics would be one; use suffix_with_index()".into());
        }
        Ok(())
    }
}

/// A record of a retry topic: when it is due (from `retry_topic-backoff-timestamp`),
/// as an instant of this process. `None` when it is due now or has no due time.
pub(crate) fn due<M: Message>(msg: &M, now: Instant, now_ms: i64) -> Option<Instant> {
    let at = find_last(msg.headers(), headers::RETRY_TOPIC_BACKOFF_TIMESTAMP).and_then(be_int)?;
    let wait = at.checked_sub(now_ms).filter(|w| *w > 0)?;
    Some(now + Duration::from_millis(wait as u64))
}

/// The attempt a record of retry topic `index` is for: `retry_topic-attempts`, else
/// the topic's place (2 for the first).
pub(crate) fn attempt<M: Message>(msg: &M, index: usize) -> u32 {
    find_last(msg.headers(), headers::RETRY_TOPIC_ATTEMPTS)
        .and_then(be_int)
        .and_then(|a| u32::try_from(a).ok())
        .filter(|a| *a >= 1)
        .unwrap_or(index as u32 + 2)
}

/// Whether the record is a copy in a retry topic (it has the retry headers).
pub(crate) fn is_retry_copy<H: Headers>(h: Option<&H>) -> bool {
    find_last(h, headers::RETRY_TOPIC_ATTEMPTS).is_some()
}

/// The retry headers of the copy for `attempt`, due at `due_ms`.
pub(crate) fn append_retry_headers(
    h: OwnedHeaders,
    attempt: u32,
    due_ms: i64,
    original_ts: Option<i64>,
) -> OwnedHeaders {
    let attempts = attempt.to_be_bytes();
    let due = due_ms.to_be_bytes();
    let mut h = h
        .insert(Header { key: headers::RETRY_TOPIC_ATTEMPTS, value: Some(&attempts[..]) })
        .insert(Header { key: headers::RETRY_TOPIC_BACKOFF_TIMESTAMP, value: Some(&due[..]) });
    if let Some(ts) = original_ts {
        let ts = ts.to_be_bytes();
        h = h.insert(Header { key: headers::RETRY_TOPIC_ORIGINAL_TIMESTAMP, value: Some(&ts[..]) });
    }
    h
}

/// A big-endian two's-complement integer of 1 to 8 bytes (Java's `BigInteger`
/// bytes, `putInt`, `putLong`).
fn be_int(v: &[u8]) -> Option<i64> {
    if v.is_empty() || v.len() > 8 {
        return None;
    }
    let fill = if v[0] & 0x80 != 0 { 0xff } else { 0 };
    let mut bytes = [fill; 8];
    bytes[8 - v.len()..].copy_from_slice(v);
    Some(i64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{OwnedMessage, Timestamp};

    #[test]
    fn names_follow_spring_and_equal_delays_need_the_index() {
        let r = RetryTopics::new([Duration::from_secs(1), Duration::from_secs(10)]);
        assert_eq!(r.topics("orders"), ["orders-retry-1000", "orders-retry-10000"]);
        assert_eq!(r.clone().suffix_with_index().topics("orders"), ["orders-retry-0", "orders-retry-1"]);
        assert!(r.validate("orders").is_ok());
        let same = RetryTopics::new([Duration::from_secs(1); 2]);
        assert!(same.validate("o").unwrap_err().to_string().contains("retry_topics"));
        assert!(same.suffix_with_index().validate("o").is_ok());
        assert!(RetryTopics::new([]).validate("o").is_err());
        let parsed = RetryTopics::parse("500ms, 10s,1m , 2h").unwrap();
        assert_eq!(
            parsed.delays(),
            [Duration::from_millis(500), Duration::from_secs(10), Duration::from_secs(60), Duration::from_secs(7200)]
        );
        assert!(RetryTopics::parse("10 parsecs").unwrap_err().to_string().contains("10 parsecs"));
    }

    #[test]
    fn headers_round_trip_and_java_encodings_are_read() {
        let h = append_retry_headers(OwnedHeaders::new(), 3, 1_700_000_000_123, Some(42));
        let msg = OwnedMessage::new(None, None, "t-retry-0".into(), Timestamp::NotAvailable, 0, 0, Some(h));
        assert!(is_retry_copy(msg.headers()));
        assert_eq!(attempt(&msg, 0), 3);
        let now = Instant::now();
        assert_eq!(due(&msg, now, 1_700_000_000_000), Some(now + Duration::from_millis(123)));
        assert_eq!(due(&msg, now, 1_700_000_000_123), None, "due now");
        assert_eq!(be_int(&[0x01]), Some(1), "BigInteger of 1");
        assert_eq!(be_int(&[0x00, 0x00, 0x00, 0x05]), Some(5), "putInt");
        assert_eq!(be_int(&[0xff]), Some(-1));
        assert_eq!(be_int(&[]), None);
        let plain = OwnedMessage::new(None, None, "t-retry-1".into(), Timestamp::NotAvailable, 0, 0, None);
        assert_eq!(attempt(&plain, 1), 3, "no header: from the topic's place");
        assert!(!is_retry_copy(plain.headers()));
    }
}
