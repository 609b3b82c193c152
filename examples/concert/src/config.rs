//! Environment of the application.

use reliable_kafka::KafkaConfig;

/// Where the services are: `DATABASE_URL`, `REDIS_URL`, `KAFKA_BROKERS`, each with the
/// local default of the development machines.
#[derive(Debug, Clone)]
pub struct Env {
    /// PostgreSQL URL.
    pub database_url: String,
    /// Redis URL.
    pub redis_url: String,
    /// Kafka settings (`bootstrap.servers` from `KAFKA_BROKERS`).
    pub kafka: KafkaConfig,
}

impl Env {
    /// Reads the environment.
    pub fn from_env() -> Self {
        Env {
            database_url: std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned()),
            redis_url: std::env::var("REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
            kafka: KafkaConfig::from_env(),
        }
    }
}
