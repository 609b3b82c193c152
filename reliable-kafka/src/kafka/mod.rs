//! Kafka: the client settings ([`KafkaConfig`]), topic specifications ([`TopicSpec`]),
//! the producer shared by the relay, the
//! dead-letter publisher and the re-driver, and the client context that logs
//! librdkafka through `tracing`.

mod config;
mod context;
mod producer;
mod topics;

pub use config::{KafkaConfig, DEFAULT_BROKERS};
pub(crate) use context::{BrokerState, HealthContext, LogContext, Producer};
pub(crate) use producer::{
    await_deliveries, enqueue_in_order, is_permanent_send_error, is_size_error, is_transient_kafka, send_in_order,
    send_one, OutRecord, Pending,
};
pub use topics::TopicSpec;
