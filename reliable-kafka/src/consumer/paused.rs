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
use super::scheduler::Partitions;

type Key = (String, i32);

/// Longest wait for librdkafka to take a seek.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);

/// The failing record of one partition: its offset, the attempt to make next, and
/// when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tracked {
    pub offset: i64,
    pub next_attempt: u32,
    pub due: Instant,
    /// Rewinds to it because a later record was delivered (a seek that did not take).
    pub rewinds: u8,
}

/// The failing record of each partition, in memory, for the current assignment: a
/// revoke forgets it, and the partition's next owner starts the record at attempt 1
/// (attempts are counted per assignment, as in Spring Kafka). At most one entry per
/// partition: while it is there, the partition's next record to run is that one.
#[derive(Debug, Default)]
pub(crate) struct Retries {
    by_topic: Mutex<HashMap<String, HashMap<i32, Tracked>>>,
}

impl Retries {
    /// The tracked state of the record at `offset`, if it is the partition's failing
    /// record.
    #[cfg(test)]
    pub(crate) fn get(&self, topic: &str, partition: i32, offset: i64) -> Option<Tracked> {
        let map = self.by_topic.lock().unwrap_or_else(|p| p.into_inner());
        map.get(topic)?.get(&partition).copied().filter(|t| t.offset == offset)
    }

    pub(crate) fn set(&self, topic: &str, partition: i32, tracked: Tracked) {
        let mut map = self.by_topic.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(topic.to_owned()).or_default().insert(partition, tracked);
    }

    /// The partition's failing record, if one waits.
    pub(crate) fn of_partition(&self, topic: &str, partition: i32) -> Option<Tracked> {
        let map = self.by_topic.lock().unwrap_or_else(|p| p.into_inner());
        map.get(topic)?.get(&partition).copied()
    }

    /// Forgets the failing records of revoked partitions: their next owner, this member
    /// or another, starts from the committed offset.
    pub(crate) fn forget<'a>(&self, revoked: impl IntoIterator<Item = (&'a str, i32)>) {
        let mut map = self.by_topic.lock().unwrap_or_else(|p| p.into_inner());
        for (topic, partition) in revoked {
            if let Some(partitions) = map.get_mut(topic) {
                partitions.remove(&partition);
            }
        }
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
    /// Pauses `topic`/`partition`, rewinds it to `offset` (or to the partition's
    /// failing record in `retries`, when that one is earlier) and keeps it paused
    /// until `until`. Pausing first makes sure nothing more of the partition is
    /// delivered meanwhile; librdkafka drops what it fetched beyond the record and
    /// fetches from it on resume.
    ///
    /// The order closes the races with the poll loop: the entry first (a revoke from
    /// now on resumes the partition), then the pause (librdkafka delivers nothing more
    /// of it), then the rewind of `partitions` (what was received of it is stale), then
    /// the seek.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn hold(
        &self,
        consumer: &StreamConsumer<ContainerContext>,
        retries: &Retries,
        partitions: &Partitions,
        topic: &str,
        partition: i32,
        offset: i64,
        until: Instant,
    ) {
        let key = (topic.to_owned(), partition);
        let offset = retries.of_partition(topic, partition).map_or(offset, |t| t.offset.min(offset));
        // The entry and the pause under one lock: `resume_due` (the poll loop, while a
        // batch task holds here) resumes under it too, so it never resumes (a no-op, the
        // partition not paused yet) and drops an entry whose pause then lands, which
        // would leave the partition paused with nothing to resume it.
        let mut held = self.until.lock().unwrap_or_else(|p| p.into_inner());
        held.insert(key.clone(), (until, partitions.epoch()));
        let mut tpl = TopicPartitionList::with_capacity(1);
        tpl.add_partition(topic, partition);
        if let Err(e) = consumer.pause(&tpl) {
            tracing::debug!(topic, partition, error = %e, "pause failed (partition revoked?)");
        }
        drop(held);
        drop(tpl);
        partitions.rewind(&key);
        // The seek waits for librdkafka's answer (local, no broker round trip). Should it
        // fail while the partition is assigned, a record delivered past the waiting one
        // is caught by `Pipeline::process` and the partition rewound again.
        if let Err(e) = consumer.seek(topic, partition, Offset::Offset(offset), SEEK_TIMEOUT) {
            tracing::warn!(topic, partition, offset, error = %e, "seek back to the waiting record failed (partition revoked?)");
        }
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
        r.set("t", 0, Tracked { offset: 5, next_attempt: 2, due, rewinds: 0 });
        assert_eq!(r.get("t", 0, 5).map(|t| t.next_attempt), Some(2));
        assert_eq!(r.get("t", 0, 6), None, "another offset of the partition is not tracked");
        assert_eq!(r.get("t", 1, 5), None);
        r.set("t", 0, Tracked { offset: 9, next_attempt: 3, due, rewinds: 0 });
        assert_eq!(r.get("t", 0, 5), None, "replaced");
        r.clear("t", 0, 5);
        assert!(r.get("t", 0, 9).is_some(), "clearing another offset keeps it");
        assert_eq!(r.of_partition("t", 0).map(|t| t.offset), Some(9));
        r.forget([("t", 0)]);
        assert_eq!(r.of_partition("t", 0), None, "a revoke forgets it");
        r.set("t", 0, Tracked { offset: 9, next_attempt: 3, due, rewinds: 0 });
        r.clear("t", 0, 9);
        assert_eq!(r.get("t", 0, 9), None);
    }
}
