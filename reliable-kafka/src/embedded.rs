//! An in-process Kafka-protocol cluster for demos, examples and fast tests: librdkafka's
//! mock cluster, reachable over TCP on localhost by any Kafka client.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;

use crate::{Error, KafkaConfig};

enum Command {
    CreateTopic { topic: String, partitions: i32, done: mpsc::Sender<rdkafka::error::KafkaResult<()>> },
    Stop,
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
                        Command::CreateTopic { topic, partitions, done } => {
                            let _ = done.send(cluster.create_topic(&topic, partitions, 1));
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
        Ok(EmbeddedKafka { bootstrap, commands, thread: Some(thread) })
    }

    /// `host:port,…` of the cluster's brokers.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// A [`KafkaConfig`] pointing at the cluster.
    pub fn config(&self) -> KafkaConfig {
        KafkaConfig::new(self.bootstrap.clone())
    }

    /// Creates each `(topic, partitions)` (replication factor 1). Creating an existing
    /// topic again is an error of the mock cluster; create each topic once.
    ///
    /// # Errors
    /// [`Error::Kafka`] when the cluster rejects a topic.
    pub fn create_topics(&self, topics: &[(&str, i32)]) -> Result<(), Error> {
        for (topic, partitions) in topics {
            let (done, result) = mpsc::channel();
            let cmd = Command::CreateTopic { topic: (*topic).to_owned(), partitions: *partitions, done };
            let stopped = || Error::Kafka {
                operation: "create topic",
                source: rdkafka::error::KafkaError::ClientCreation("embedded cluster stopped".into()),
            };
            self.commands.send(cmd).map_err(|_| stopped())?;
            result.recv().map_err(|_| stopped())?.map_err(Error::kafka("create topic"))?;
        }
        Ok(())
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
