//! Kafka client settings shared by the relay, the listener container and the
//! dead-letter publisher.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::Error;

/// Default bootstrap servers when `KAFKA_BROKERS` is unset.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";

/// librdkafka settings, passed through unchanged (any key of librdkafka's
/// `CONFIGURATION.md` works, including TLS and SASL ones), plus the framework's
/// reliability presets applied underneath them.
///
/// `Debug` shows every key but hides the values of secrets (`*password*`, `*secret*`,
/// `sasl.oauthbearer.config`, `ssl.key.pem`, `ssl.keystore.*`).
#[derive(Clone)]
pub struct KafkaConfig {
    settings: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// A configuration with `bootstrap.servers` set to `brokers` (comma-separated
    /// `host:port` list).
    pub fn new(brokers: impl Into<String>) -> Self {
        let mut settings = BTreeMap::new();
        settings.insert("bootstrap.servers".to_owned(), brokers.into());
        KafkaConfig { settings }
    }

    /// `bootstrap.servers` from `KAFKA_BROKERS` ([`DEFAULT_BROKERS`] when unset), and
    /// every `KAFKA_CONFIG_<NAME>` variable as librdkafka property `<name>` with `_`
    /// read as `.`: `KAFKA_CONFIG_SECURITY_PROTOCOL=SASL_SSL` sets `security.protocol`,
    /// `KAFKA_CONFIG_SASL_PASSWORD` sets `sasl.password` (in the manner of Spring Boot's
    /// `spring.kafka.properties.*`).
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars())
    }

    fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut config = Self::new(DEFAULT_BROKERS);
        for (name, value) in vars {
            if name == "KAFKA_BROKERS" {
                config = config.set("bootstrap.servers", value);
            } else if let Some(key) = name.strip_prefix("KAFKA_CONFIG_").filter(|k| !k.is_empty()) {
                config = config.set(key.to_ascii_lowercase().replace('_', "."), value);
            }
        }
        config
    }

    /// Sets a librdkafka property; it wins over the framework's presets.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.insert(key.into(), value.into());
        self
    }

    /// The value set for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }

    /// `bootstrap.servers`.
    pub fn brokers(&self) -> &str {
        self.get("bootstrap.servers").unwrap_or(DEFAULT_BROKERS)
    }

    /// The librdkafka configuration: `presets` first, then every key set by the user.
    pub(crate) fn client_config(&self, presets: &[(&str, &str)]) -> ClientConfig {
        let mut cc = ClientConfig::new();
        for (k, v) in presets {
            cc.set(*k, *v);
        }
        for (k, v) in &self.settings {
            cc.set(k, v);
        }
        cc
    }

    /// Producer presets: `acks=all`, `enable.idempotence=true` (no duplicates or
    /// reordering from producer retries), `linger.ms=0` (the relay hands over a whole
    /// batch at once and waits for it, so lingering only adds latency: measured 67k →
    /// 109k rows/s and p50 19 → 15 ms commit-to-receipt, see `BENCHMARKS.md`),
    /// `compression.type=lz4`.
    /// `message.timeout.ms` keeps librdkafka's 300 s: a message that times out locally
    /// makes the idempotent producer bump its epoch, which some Kafka-protocol brokers
    /// (tansu 0.6.0) do not survive, and a short timeout only turns a slow broker into
    /// relay retries.
    pub(crate) const PRODUCER_PRESETS: &'static [(&'static str, &'static str)] =
        &[("acks", "all"), ("enable.idempotence", "true"), ("linger.ms", "0"), ("compression.type", "lz4")];

    /// Creates any of `topics` that does not exist yet (name, partitions, replication
    /// factor). Existing topics are left as they are.
    ///
    /// # Errors
    /// [`Error::Kafka`] when the admin request fails for another reason than the topic
    /// already existing.
    pub async fn ensure_topics(&self, topics: &[(&str, i32, i32)]) -> Result<(), Error> {
        let admin: AdminClient<DefaultClientContext> =
            self.client_config(&[]).create().map_err(Error::kafka("create admin client"))?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, partitions, rf)| NewTopic::new(name, *partitions, TopicReplication::Fixed(*rf)))
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin.create_topics(new.iter(), &opts).await.map_err(Error::kafka("create topics"))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(Error::Kafka {
                        operation: "create topics",
                        source: rdkafka::error::KafkaError::AdminOp(code),
                    })
                }
            }
        }
        Ok(())
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self::from_env()
    }
}

fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k == "sasl.oauthbearer.config"
        || k == "ssl.key.pem"
        || k.starts_with("ssl.keystore")
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.settings {
            if is_secret(k) {
                m.entry(k, &"<redacted>");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

/// A record to produce, owned.
pub(crate) struct OutRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: rdkafka::message::OwnedHeaders,
}

/// Enqueues `records` in order (waiting while the local queue is full, never letting a
/// later record overtake an earlier one) and then awaits all deliveries at once.
/// Result `i` belongs to record `i`.
pub(crate) async fn send_in_order(
    producer: &rdkafka::producer::FutureProducer,
    records: Vec<OutRecord>,
) -> Vec<Result<(), rdkafka::error::KafkaError>> {
    use rdkafka::error::KafkaError;
    use rdkafka::producer::FutureRecord;

    let mut pending = Vec::with_capacity(records.len());
    for OutRecord { topic, key, payload, headers } in records {
        // librdkafka copies key and payload at send; the headers move into the message.
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(headers);
        if let Some(k) = &key {
            rec = rec.key(k.as_slice());
        }
        if let Some(p) = &payload {
            rec = rec.payload(p.as_slice());
        }
        loop {
            match producer.send_result(rec) {
                Ok(f) => {
                    pending.push(Ok(f));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    pending.push(Err(e));
                    break;
                }
            }
        }
    }
    let futures = pending.into_iter().map(|p| async move {
        match p {
            Ok(f) => match f.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(e),
                Err(_canceled) => Err(KafkaError::Canceled),
            },
            Err(e) => Err(e),
        }
    });
    futures::future::join_all(futures).await
}

/// Whether a send failed because the record is too large.
pub(crate) fn is_size_error(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(e.rdkafka_error_code(), Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge))
}

/// Whether a send failed for a reason retrying cannot fix (the record itself is too
/// large or invalid, or the topic name is), as opposed to an outage. Only such errors
/// count toward the relay's `max_send_attempts`; outages, timeouts and authorization
/// errors are retried without limit, so a broker outage never parks rows.
pub(crate) fn is_permanent_send_error(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::InvalidRecord
                | C::MessageBatchTooLarge
                | C::InvalidTopic
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_map_to_librdkafka_properties() {
        let vars = [
            ("KAFKA_BROKERS", "b1:9093,b2:9093"),
            ("KAFKA_CONFIG_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_CONFIG_SASL_PASSWORD", "s3cret"),
            ("PATH", "/usr/bin"),
        ];
        let c = KafkaConfig::from_vars(vars.map(|(k, v)| (k.to_owned(), v.to_owned())));
        assert_eq!(c.brokers(), "b1:9093,b2:9093");
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("sasl.password"), Some("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"), "Debug hides the password");
    }

    #[test]
    fn debug_hides_secrets() {
        let c = KafkaConfig::new("b:9092")
            .set("sasl.password", "hunter2")
            .set("ssl.keystore.password", "s3cret")
            .set("sasl.username", "alice");
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2") && !s.contains("s3cret"), "{s}");
        assert!(s.contains("alice") && s.contains("sasl.password"), "{s}");
    }

    #[test]
    fn user_settings_win_over_presets() {
        let c = KafkaConfig::new("b:9092").set("acks", "1");
        let cc = c.client_config(KafkaConfig::PRODUCER_PRESETS);
        assert_eq!(cc.get("acks"), Some("1"));
        assert_eq!(cc.get("enable.idempotence"), Some("true"));
    }
}
