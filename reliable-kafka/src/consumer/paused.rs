//! Back-off without blocking the poll loop: where each partition's failing record
//! stands between attempts ([`Retries`], as Spring Kafka's `FailedRecordTracker` keeps
//! it), and the partitions paused until their record is due ([`Paused`]).
//!
//! When a record must wait (a back-off delay, `RetryAfter`, a record of a retry topic
//! not due yet, an open circuit breaker), its partition is paused and rewound to the
//! record (`seek`), the records after it that were already received are dropped (the
//! partition's local "revoke", see [`super::scheduler::Partitions::rewind`]), and the
//! poll loop goes on polling, so the member is never evicted and the other partitions
//! keep flowing. At the due time the partition is resumed, librdkafka fetches from the
//! record again, and [`Retries`] gives its next attempt number.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

use super::container::ContainerContext;

type Key = (String, i32);

/// The failing record of one partition: its offset, the attempt to make next, and
/// when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tracked {
    pub offset: i64,
    pub next_attempt: u32,
    pub due: Instant,
}

/// The failing record of each partition, in memory. Kept across a revoke, so that a
/// partition assigned back goes on where it was; a partition that moved to another
/// member starts there at attempt 1 (attempts are counted per member, as in Spring
/// Kafka). At most one entry per partition: a newer record replaces it.
#[derive(Debug, Default)]
pub(crate) struct Retries {
    by_topic: Mutex<HashMap<String, HashMap<i32, Tracked>>>,
}

impl Retries {
    /// The tracked state of the record at `offset`, if it is the partition's failing
    /// record.
    pub(crate) fn get(&self, topic: &str, partition: i32, offset: i64) -> Option<Tracked> {
        let map = self.by_topic.lock().unwrap_or_else(|p| p.into_inner());
        map.get(topic)?.get(&partition).copied().filter(|t| t.offset == offset)
    }

    pub(crate) fn set(&self, topic: &str, partition: i32, tracked: Tracked) {
        let mut map = self.by_topic.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(topic.to_owned()).or_default().insert(partition, tracked);
    }

    /// Forgets the record at `offset` (done: processed or dead-lettered).
    pub(crate) fn clear(&self, topic: &str, partition: i32, offset: i64) {
        let mut map = self.by_topic.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(partitions) = map.get_mut(topic) {
            if partitions.get(&partition).is_some_and(|t| t.offset == offset) {
                partitions.remove(&partition);
            }
        }
    }
}

/// The partitions this container paused, each until when, and the revocation epoch
/// at which it was paused; shared by the poll loop and batch tasks.
#[derive(Debug, Default)]
pub(crate) struct Paused {
    until: Mutex<HashMap<Key, (Instant, u64)>>,
}

impl Paused {
    /// Pauses `topic`/`partition`, rewinds it to `offset` and keeps it paused until
    /// `until`. The seek is asynchronous (librdkafka drops what it fetched beyond the
    /// record, and fetches from `offset` on resume); pausing first makes sure nothing
    /// more of the partition is delivered meanwhile.
    pub(crate) fn hold(
        &self,
        consumer: &StreamConsumer<ContainerContext>,
        topic: &str,
        partition: i32,
        offset: i64,
        until: Instant,
        epoch: u64,
    ) {
        let mut tpl = TopicPartitionList::with_capacity(1);
        tpl.add_partition(topic, partition);
        if let Err(e) = consumer.pause(&tpl) {
            tracing::debug!(topic, partition, error = %e, "pause failed (partition revoked?)");
        }
        if let Err(e) = consumer.seek(topic, partition, Offset::Offset(offset), Duration::ZERO) {
            tracing::debug!(topic, partition, error = %e, "seek failed (partition revoked?)");
        }
        drop(tpl);
        let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        map.insert((topic.to_owned(), partition), (until, epoch));
    }

    /// Resumes the partitions that are due, and those revoked since they were paused
    /// (`revoked(key, epoch)`): librdkafka keeps an application's pause across a
    /// reassignment, and the partition's next owner, this member or another, starts
    /// from the committed offset. Returns how many stay paused and the earliest due
    /// time among them.
    pub(crate) fn resume_due(
        &self,
        consumer: &StreamConsumer<ContainerContext>,
        now: Instant,
        revoked: impl Fn(&Key, u64) -> bool,
    ) -> (usize, Option<Instant>) {
        let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return (0, None);
        }
        let mut tpl = TopicPartitionList::new();
        map.retain(|key, (until, epoch)| {
            let go = *until <= now || revoked(key, *epoch);
            if go {
                tpl.add_partition(&key.0, key.1);
            }
            !go
        });
        if tpl.count() > 0 {
            if let Err(e) = consumer.resume(&tpl) {
                tracing::debug!(error = %e, "resume failed (partitions revoked?)");
            }
        }
        drop(tpl);
        (map.len(), map.values().map(|(until, _)| *until).min())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_tracks_only_its_latest_failing_record() {
        let r = Retries::default();
        let due = Instant::now();
        r.set("t", 0, Tracked { offset: 5, next_attempt: 2, due });
        assert_eq!(r.get("t", 0, 5).map(|t| t.next_attempt), Some(2));
        assert_eq!(r.get("t", 0, 6), None, "another offset of the partition is not tracked");
        assert_eq!(r.get("t", 1, 5), None);
        r.set("t", 0, Tracked { offset: 9, next_attempt: 3, due });
        assert_eq!(r.get("t", 0, 5), None, "replaced");
        r.clear("t", 0, 5);
        assert!(r.get("t", 0, 9).is_some(), "clearing another offset keeps it");
        r.clear("t", 0, 9);
        assert_eq!(r.get("t", 0, 9), None);
    }
}
