//! Environment of the application: each service is used when its variable is set,
//! and replaced by an embedded stand-in when it is not.

use reliable_kafka::KafkaConfig;

/// Where the services are. Unset variables select the embedded defaults: SQLite for
/// `DATABASE_URL`, librdkafka's in-process mock cluster for `KAFKA_BROKERS`, an
/// in-process store for `REDIS_URL`.
#[derive(Debug, Clone)]
pub struct Env {
    /// `DATABASE_URL`: `postgres://…`, `mysql://…` (MariaDB 10.6+) or `sqlite:…`.
    pub database_url: Option<String>,
    /// `REDIS_URL`.
    pub redis_url: Option<String>,
    /// `KAFKA_BROKERS` with the other `KAFKA_*` settings of [`KafkaConfig::from_env`].
    pub kafka: Option<KafkaConfig>,
    /// Prefix of the Redis keys (`REDIS_NAMESPACE`, default `default`).
    pub redis_namespace: String,
}

impl Env {
    /// Reads the environment; empty variables count as unset.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Env {
            database_url: var("DATABASE_URL"),
            redis_url: var("REDIS_URL"),
            kafka: var("KAFKA_BROKERS").map(|_| KafkaConfig::from_env()),
            redis_namespace: var("REDIS_NAMESPACE").unwrap_or_else(|| "default".to_owned()),
        }
    }
}
