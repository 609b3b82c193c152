//! An in-process Kafka-protocol cluster for demos, examples and fast tests: librdkafka's
//! mock cluster, reachable over TCP on localhost by any Kafka client.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::{Error, KafkaConfig, TopicSpec};

enum Command {
    CreateTopic { topic: String, partitions: i32, replicas: i32, done: mpsc::Sender<rdkafka::error::KafkaResult<()>> },
    Inject { fault: MockFault, done: mpsc::Sender<rdkafka::error::KafkaResult<()>> },
    Stop,
}

/// A broker fault for [`EmbeddedKafka::inject`]: what librdkafka's mock cluster can
/// simulate (`rd_kafka_mock_*` of librdkafka's `rdkafka_mock.h`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum MockFault {
    /// The next `errors.len()` requests of `api` to any broker fail, each with the next
    /// error of `errors`. `RD_KAFKA_RESP_ERR__TRANSPORT` closes the client's connection
    /// instead of answering.
    RequestErrors {
        /// The request type, e.g. `Produce`, `Fetch`, `OffsetCommit`, `JoinGroup`.
        api: RDKafkaApiKey,
        /// The error codes, used in order.
        errors: Vec<RDKafkaRespErr>,
    },
    /// The coordinator of consumer group `group` moves to broker `broker` (1-based).
    MoveGroupCoordinator {
        /// Consumer group id.
        group: String,
        /// Broker id, `1..=brokers`.
        broker: i32,
    },
    /// The leader of `topic`'s `partition` moves to broker `broker` (1-based).
    MovePartitionLeader {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Broker id, `1..=brokers`.
        broker: i32,
    },
    /// Broker `broker` closes its connections and refuses new ones (-1: every broker).
    /// Leaders do not move.
    BrokerDown(i32),
    /// Broker `broker` accepts connections again (-1: every broker).
    BrokerUp(i32),
}

/// librdkafka's mock cluster, running on its own thread until dropped.
///
/// It speaks the Kafka protocol on `127.0.0.1` (see [`EmbeddedKafka::bootstrap_servers`]),
/// supports produce and consume, consumer groups with committed offsets, rebalancing,
/// the idempotent producer and headers. Its limits (from librdkafka and measured, see
/// the repository's `KAFKA-NOTES`): no admin API (create topics with
/// [`EmbeddedKafka::create_topics`], not [`KafkaConfig::ensure_topics`]), transactions
/// are not honoured, each partition keeps at most 100 000 records or 5 MiB (older
/// records are dropped), and nothing survives the process. It is for demos and tests,
/// never for data you want to keep.
///
/// ```
/// let kafka = reliable_kafka::EmbeddedKafka::start(1)?;
/// kafka.create_topics(&[("payment.failed", 3), ("payment.failed.DLQ", 3)])?;
/// let config = kafka.config(); // bootstrap.servers = the mock cluster
/// assert!(config.brokers().starts_with("127.0.0.1:"));
/// # Ok::<(), reliable_kafka::Error>(())
/// ```
pub struct EmbeddedKafka {
    bootstrap: String,
    brokers: i32,
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedKafka").field("bootstrap", &self.bootstrap).finish_non_exhaustive()
    }
}

impl EmbeddedKafka {
    /// Starts a mock cluster of `brokers` brokers (1..=10).
    ///
    /// # Errors
    /// [`Error::Config`] naming `brokers` when out of range; [`Error::Kafka`] when
    /// librdkafka cannot start the cluster.
    pub fn start(brokers: i32) -> Result<EmbeddedKafka, Error> {
        if !(1..=10).contains(&brokers) {
            return Err(crate::ConfigError::invalid("brokers", "must be within 1..=10").into());
        }
        let (ready_tx, ready_rx) = mpsc::channel();
        let (commands, command_rx) = mpsc::channel::<Command>();
        // The cluster is not `Send`: it lives and dies on this thread.
        let thread = std::thread::Builder::new()
            .name("rk-embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                while let Ok(cmd) = command_rx.recv() {
                    match cmd {
                        Command::CreateTopic { topic, partitions, replicas, done } => {
                            let _ = done.send(cluster.create_topic(&topic, partitions, replicas));
                        }
                        Command::Inject { fault, done } => {
                            let result = match fault {
                                MockFault::RequestErrors { api, errors } => {
                                    cluster.request_errors(api, &errors);
                                    Ok(())
                                }
                                MockFault::MoveGroupCoordinator { group, broker } => {
                                    cluster.coordinator(MockCoordinator::Group(group), broker)
                                }
                                MockFault::MovePartitionLeader { topic, partition, broker } => {
                                    cluster.partition_leader(&topic, partition, Some(broker))
                                }
                                MockFault::BrokerDown(b) => cluster.broker_down(b),
                                MockFault::BrokerUp(b) => cluster.broker_up(b),
                            };
                            let _ = done.send(result);
                        }
                        Command::Stop => break,
                    }
                }
            })
            .map_err(|e| Error::Kafka {
                operation: "start embedded cluster",
                source: rdkafka::error::KafkaError::ClientCreation(e.to_string()),
            })?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| Error::Kafka {
                operation: "start embedded cluster",
                source: rdkafka::error::KafkaError::ClientCreation("mock cluster thread exited".into()),
            })?
            .map_err(Error::kafka("start embedded cluster"))?;
        Ok(EmbeddedKafka { bootstrap, brokers, commands, thread: Some(thread) })
    }

    /// `host:port,…` of the cluster's brokers.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// A [`KafkaConfig`] pointing at the cluster.
    pub fn config(&self) -> KafkaConfig {
        KafkaConfig::new(self.bootstrap.clone())
    }

    /// Creates each topic with its partitions and replication factor: [`TopicSpec`]s,
    /// `(name, partitions)` tuples (replication factor 1) or `(name, partitions,
    /// replication factor)` tuples. The mock cluster keeps a replica set per partition
    /// (at most the number of brokers) but models no topic configs: a spec's configs
    /// (`min.insync.replicas`, `retention.ms`, ...) are not applied, and a debug event
    /// names them. Creating an existing topic again is an error of the mock cluster;
    /// create each topic once.
    ///
    /// ```
    /// use reliable_kafka::{EmbeddedKafka, TopicSpec};
    /// let kafka = EmbeddedKafka::start(3)?;
    /// kafka.create_topics(&[TopicSpec::new("payment.failed", 3).replication_factor(3)])?;
    /// kafka.create_topics(&[("payment.failed.DLQ", 3)])?;
    /// # Ok::<(), reliable_kafka::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] naming `replication_factor` when a spec asks for more replicas
    /// than the cluster has brokers (or fewer than 1), as a broker refuses it;
    /// [`Error::Kafka`] when the cluster rejects a topic (a topic that exists).
    pub fn create_topics<T: Clone + Into<TopicSpec>>(&self, topics: &[T]) -> Result<(), Error> {
        for spec in topics.iter().cloned().map(Into::into) {
            if !(1..=self.brokers).contains(&spec.replicas()) {
                return Err(crate::ConfigError::invalid(
                    "replication_factor",
                    format!(
                        "topic {}: {} replicas on a cluster of {} brokers",
                        spec.name(),
                        spec.replicas(),
                        self.brokers
                    ),
                )
                .into());
            }
            if !spec.configs().is_empty() {
                tracing::debug!(topic = spec.name(), configs = ?spec.configs(), "topic configs not modelled by the mock cluster");
            }
            self.call("create topic", |done| Command::CreateTopic {
                topic: spec.name().to_owned(),
                partitions: spec.partitions(),
                replicas: spec.replicas(),
                done,
            })?;
        }
        Ok(())
    }

    /// Injects `fault` into the running cluster, for fault-injection tests: clients see
    /// it on their next requests.
    ///
    /// ```
    /// use reliable_kafka::{EmbeddedKafka, MockFault};
    /// use reliable_kafka::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    /// let kafka = EmbeddedKafka::start(3)?;
    /// kafka.inject(MockFault::RequestErrors {
    ///     api: RDKafkaApiKey::Produce,
    ///     errors: vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 3],
    /// })?;
    /// kafka.inject(MockFault::MoveGroupCoordinator { group: "payment-compensator-group".into(), broker: 2 })?;
    /// # Ok::<(), reliable_kafka::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Kafka`] when the cluster rejects the fault (an unknown broker id, say)
    /// or has stopped.
    pub fn inject(&self, fault: MockFault) -> Result<(), Error> {
        self.call("inject fault", |done| Command::Inject { fault, done })
    }

    fn call(
        &self,
        operation: &'static str,
        command: impl FnOnce(mpsc::Sender<rdkafka::error::KafkaResult<()>>) -> Command,
    ) -> Result<(), Error> {
        let (done, result) = mpsc::channel();
        let stopped = || Error::Kafka {
            operation,
            source: rdkafka::error::KafkaError::ClientCreation("embedded cluster stopped".into()),
        };
        self.commands.send(command(done)).map_err(|_| stopped())?;
        result.recv().map_err(|_| stopped())?.map_err(Error::kafka(operation))
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
