//! What a re-drive run (or a read of a dead-letter topic) covers: a range of offsets
//! per partition.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Header;
use rdkafka::{Offset, TopicPartitionList};

use crate::Error;

/// A range of one dead-letter partition to process in a run: `[start, end)`.
pub(crate) struct Span {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

/// A header as JSON: `{"key": .., "value": ..}` for text, `{"key": .., "hex": ..}`
/// for binary values (such as Spring Kafka's big-endian partition and offset), since
/// PostgreSQL's `jsonb` cannot hold NUL characters.
pub(crate) fn header_json(h: Header<'_, &[u8]>) -> serde_json::Value {
    match h.value {
        None => serde_json::json!({ "key": h.key }),
        Some(v) => match std::str::from_utf8(v) {
            Ok(text) if !text.contains('\0') => serde_json::json!({ "key": h.key, "value": text }),
            _ => {
                let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
                serde_json::json!({ "key": h.key, "hex": hex })
            }
        },
    }
}

/// The partitions of `topics` with records past the committed offset of the
/// consumer's group (`from_committed`), or all their records, up to the end offsets of
/// now.
pub(crate) fn plan(consumer: &StreamConsumer, topics: &[String], from_committed: bool) -> Result<Vec<Span>, Error> {
    let timeout = Duration::from_secs(10);
    let mut all = TopicPartitionList::new();
    for topic in topics {
        let md =
            consumer.fetch_metadata(Some(topic), timeout).map_err(Error::kafka("fetch dead-letter topic metadata"))?;
        for t in md.topics() {
            for p in t.partitions() {
                all.add_partition(t.name(), p.id());
            }
        }
    }
    let committed = consumer.committed_offsets(all, timeout).map_err(Error::kafka("read re-drive offsets"))?;
    let mut spans = Vec::new();
    for e in committed.elements() {
        let (low, high) = consumer
            .fetch_watermarks(e.topic(), e.partition(), timeout)
            .map_err(Error::kafka("read dead-letter watermarks"))?;
        let start = match e.offset() {
            Offset::Offset(o) if from_committed => o.max(low),
            _ => low,
        };
        if start < high {
            spans.push(Span { topic: e.topic().to_owned(), partition: e.partition(), start, end: high });
        }
    }
    drop(committed);
    Ok(spans)
}
