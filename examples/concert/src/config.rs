//! Environment of the application.

use reliable_kafka::KafkaConfig;

/// Where the services are: `DATABASE_URL`, `REDIS_URL`, `KAFKA_BROKERS` (and
/// `REDIS_NAMESPACE`), each with the
/// local default of the development machines.
#[derive(Debug, Clone)]
pub struct Env {
    /// PostgreSQL URL.
    pub database_url: String,
    /// Redis URL.
    pub redis_url: String,
    /// Kafka settings (`bootstrap.servers` from `KAFKA_BROKERS`).
    pub kafka: KafkaConfig,
    /// Prefix of the Redis keys (`REDIS_NAMESPACE`, default `default`).
    pub redis_namespace: String,
}

impl Env {
    /// Reads the environment.
    pub fn from_env() -> Self {
        Env {
            database_url: std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned()),
            redis_url: std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
            kafka: KafkaConfig::from_env(),
            redis_namespace: std::env::var("REDIS_NAMESPACE").unwrap_or_else(|_| "default".to_owned()),
        }
    }
}
