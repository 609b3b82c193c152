//! Topics created from a [`TopicSpec`] on the Kafka-protocol broker (`KAFKA_BROKERS`,
//! tansu in CI): partitions, replication factor and topic configs as the broker
//! reports them back.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use reliable_kafka::TopicSpec;
use reliable_kafka_tests::{kafka, unique};

#[tokio::test]
async fn a_topic_spec_creates_its_partitions_and_configs_and_leaves_an_existing_topic_alone() {
    let kafka = kafka();
    let name = unique("spec");
    let spec = TopicSpec::new(&name, 4).config("retention.ms", "3600000").config("segment.bytes", "104857600");
    kafka.ensure_topics(&[spec]).await.expect("create");

    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka.brokers()).create().unwrap();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let described = admin.describe_configs([&ResourceSpecifier::Topic(&name)], &opts).await.unwrap();
    let resource = described.into_iter().next().unwrap().expect("topic configs");
    let value = |key: &str| resource.get(key).and_then(|e| e.value.clone());
    assert_eq!(value("retention.ms").as_deref(), Some("3600000"));
    assert_eq!(value("segment.bytes").as_deref(), Some("104857600"));

    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", kafka.brokers()).create().unwrap();
    let partitions = |c: &BaseConsumer| {
        let md = c.fetch_metadata(Some(&name), Duration::from_secs(10)).unwrap();
        md.topics()[0].partitions().len()
    };
    assert_eq!(partitions(&consumer), 4);

    // Ensured again with other settings: the topic exists, so nothing changes.
    kafka.ensure_topics(&[(name.as_str(), 8, 1)]).await.expect("exists already");
    assert_eq!(partitions(&consumer), 4);
}
