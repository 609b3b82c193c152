//! [`KafkaConfig`]: librdkafka settings shared by the relay, the listener container,
//! the dead-letter publisher and the re-driver.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use super::TopicSpec;
use crate::{ConfigError, Error};

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

    /// `statistics.interval.ms` of the container's consumer and the relay's producer
    /// ([`crate::STATISTICS_INTERVAL`]), unless the user set it.
    pub(crate) fn statistics_preset() -> String {
        crate::health::STATISTICS_INTERVAL.as_millis().to_string()
    }

    /// Consumer presets of the listener container and the re-driver: offsets are
    /// stored and committed by the framework after each record's outcome.
    pub(crate) const CONSUMER_PRESETS: &'static [(&'static str, &'static str)] =
        &[("enable.auto.commit", "false"), ("enable.auto.offset.store", "false"), ("auto.offset.reset", "earliest")];

    /// The librdkafka configuration of a consumer of `group`: the consumer presets,
    /// `extra`, then every key set by the user.
    pub(crate) fn consumer_config(&self, group: &str, extra: &[(&str, &str)]) -> ClientConfig {
        let mut presets: Vec<(&str, &str)> = vec![("group.id", group)];
        presets.extend_from_slice(Self::CONSUMER_PRESETS);
        presets.extend_from_slice(extra);
        self.client_config(&presets)
    }

    /// The `max.poll.interval.ms` in effect (librdkafka's default 300 000 when unset).
    ///
    /// # Errors
    /// [`ConfigError::InvalidValue`] naming the key when it is not an integer.
    pub(crate) fn max_poll_interval(&self) -> Result<Duration, ConfigError> {
        self.get("max.poll.interval.ms")
            .map(|v| v.parse().map_err(|_| ConfigError::invalid("max.poll.interval.ms", "must be an integer (ms)")))
            .transpose()
            .map(|ms| Duration::from_millis(ms.unwrap_or(300_000)))
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
    ///
    /// `partitioner=murmur2_random`: the Java client's partitioner (murmur2 of the key,
    /// positive, modulo the partition count; a record without key goes to a random
    /// partition), so a key lands on the same partition whichever client produced it,
    /// as services of Spring Kafka and of this crate share topics. librdkafka's own
    /// default (`consistent_random`, CRC32) places keys elsewhere.
    pub(crate) const PRODUCER_PRESETS: &'static [(&'static str, &'static str)] = &[
        ("acks", "all"),
        ("enable.idempotence", "true"),
        ("linger.ms", "0"),
        ("compression.type", "lz4"),
        ("partitioner", "murmur2_random"),
    ];

    /// The number of brokers in the cluster's metadata, e.g. to cap a topic's
    /// replication factor on a smaller cluster than production's. Asks the bootstrap
    /// servers, waiting up to `timeout` (on a blocking thread).
    ///
    /// # Errors
    /// [`Error::Kafka`] when the client cannot be created or no broker answers in time.
    pub async fn broker_count(&self, timeout: Duration) -> Result<usize, Error> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let config = self.client_config(&[]);
        let count = tokio::task::spawn_blocking(move || {
            let client: BaseConsumer = config.create().map_err(Error::kafka("create metadata client"))?;
            let metadata = client.fetch_metadata(None, timeout).map_err(Error::kafka("fetch metadata"))?;
            Ok::<_, Error>(metadata.brokers().len())
        })
        .await
        .map_err(|e| Error::Kafka {
            operation: "fetch metadata",
            source: rdkafka::error::KafkaError::ClientCreation(e.to_string()),
        })??;
        Ok(count)
    }

    /// Creates any of `topics` that does not exist yet, each with its partitions,
    /// replication factor and topic configs ([`TopicSpec`], or a tuple `(name,
    /// partitions, replication factor)` for a topic without configs). Existing topics
    /// are left as they are: neither their partitions nor their configs are changed.
    ///
    /// # Errors
    /// [`Error::Kafka`] when the admin request fails, or the broker refuses a topic for
    /// another reason than its existing already (a replication factor above the
    /// number of brokers, an unknown or invalid config).
    pub async fn ensure_topics<T: Clone + Into<TopicSpec>>(&self, topics: &[T]) -> Result<(), Error> {
        let specs: Vec<TopicSpec> = topics.iter().cloned().map(Into::into).collect();
        let admin: AdminClient<DefaultClientContext> =
            self.client_config(&[]).create().map_err(Error::kafka("create admin client"))?;
        let new: Vec<NewTopic<'_>> = specs
            .iter()
            .map(|t| {
                t.configs().iter().fold(
                    NewTopic::new(t.name(), t.partitions(), TopicReplication::Fixed(t.replicas())),
                    |topic, (k, v)| topic.set(k, v),
                )
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin.create_topics(new.iter(), &opts).await.map_err(Error::kafka("create topics"))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    tracing::error!(%topic, error = %code, "topic not created");
                    return Err(Error::Kafka {
                        operation: "create topics",
                        source: rdkafka::error::KafkaError::AdminOp(code),
                    });
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
