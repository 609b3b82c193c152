//! Diagnostic: prints low/high watermarks of a topic's partitions and the committed
//! offsets of a consumer group. `rk-inspect <topic> <group>`
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, TopicPartitionList};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, topic, group] = args.as_slice() else {
        eprintln!("usage: rk-inspect <topic> <group>");
        std::process::exit(2);
    };
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let c: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", group).create().unwrap();
    let t = Duration::from_secs(10);
    let md = c.fetch_metadata(Some(topic), t).unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
    }
    let committed = c.committed_offsets(tpl, t).unwrap();
    for e in committed.elements() {
        let (lo, hi) = c.fetch_watermarks(topic, e.partition(), t).unwrap();
        println!("{topic}[{}] low={lo} high={hi} committed={:?}", e.partition(), e.offset());
    }
    drop(committed);
}
