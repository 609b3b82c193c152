//! Topic specifications for [`KafkaConfig::ensure_topics`](super::KafkaConfig::ensure_topics):
//! partitions, replication factor and topic-level configs, as `kafka-topics.sh
//! --create --config k=v` takes them.

use std::borrow::Cow;

/// A topic to create: name, partition count, replication factor and topic configs.
///
/// ```
/// use reliable_kafka::TopicSpec;
///
/// // Seed 004's settings: 3 replicas, 2 of them in sync before a write is acknowledged,
/// // records kept 7 days in segments of 1 GiB.
/// let orders = TopicSpec::new("order.placed", 3)
///     .replication_factor(3)
///     .config("min.insync.replicas", "2")
///     .config("retention.ms", "604800000")
///     .config("segment.bytes", "1073741824");
/// assert_eq!(orders.configs().len(), 3);
///
/// // A tuple (name, partitions, replication factor) is a spec without configs.
/// let dlq: TopicSpec = ("order.placed.DLQ", 3, 1).into();
/// assert_eq!(dlq.partitions(), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    name: String,
    partitions: i32,
    replication_factor: i32,
    configs: Vec<(Cow<'static, str>, String)>,
}

impl TopicSpec {
    /// A topic of `partitions` partitions, replication factor 1 and no configs (the
    /// broker's defaults apply).
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        TopicSpec { name: name.into(), partitions, replication_factor: 1, configs: Vec::new() }
    }

    /// Replicas of each partition (Kafka's `replication.factor`; at most the number of
    /// brokers, or the broker refuses the topic).
    #[must_use]
    pub fn replication_factor(mut self, replicas: i32) -> Self {
        self.replication_factor = replicas;
        self
    }

    /// A topic-level config, by Kafka's name (`min.insync.replicas`, `retention.ms`
    /// in ms, `segment.bytes` and `max.message.bytes` in bytes, `cleanup.policy`, ...).
    /// A name the broker does not know makes [`KafkaConfig::ensure_topics`] fail with
    /// the broker's answer.
    ///
    /// [`KafkaConfig::ensure_topics`]: super::KafkaConfig::ensure_topics
    #[must_use]
    pub fn config(mut self, name: impl Into<Cow<'static, str>>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.configs.retain(|(n, _)| *n != name);
        self.configs.push((name, value.into()));
        self
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Partitions.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// Replicas per partition.
    pub fn replicas(&self) -> i32 {
        self.replication_factor
    }

    /// The topic configs, in the order set (a name set twice keeps its last value).
    pub fn configs(&self) -> &[(Cow<'static, str>, String)] {
        &self.configs
    }
}

impl<S: AsRef<str>> From<(S, i32)> for TopicSpec {
    /// `(name, partitions)`: replication factor 1, without configs.
    fn from((name, partitions): (S, i32)) -> Self {
        TopicSpec::new(name.as_ref(), partitions)
    }
}

impl<S: AsRef<str>> From<(S, i32, i32)> for TopicSpec {
    /// `(name, partitions, replication factor)`, without configs.
    fn from((name, partitions, replicas): (S, i32, i32)) -> Self {
        TopicSpec::new(name.as_ref(), partitions).replication_factor(replicas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_set_twice_keeps_its_last_value_and_tuples_have_none() {
        let spec = TopicSpec::new("t", 6).replication_factor(3).config("retention.ms", "1").config("retention.ms", "2");
        assert_eq!(spec.configs(), &[(Cow::Borrowed("retention.ms"), "2".to_owned())]);
        assert_eq!((spec.partitions(), spec.replicas()), (6, 3));
        let tuple: TopicSpec = (String::from("u"), 2, 1).into();
        assert_eq!(tuple, TopicSpec::new("u", 2));
    }
}
