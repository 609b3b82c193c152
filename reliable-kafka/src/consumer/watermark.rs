//! Deduplication at the cost of a watermark: the consumer's side
//! (`ListenerContainerBuilder::watermark_dedup`).
//!
//! A relay with sequence numbers (`OutboxRelayBuilder::sequence_numbers`) numbers each
//! row once, per shard (the record's *source*), keeps the number when it sends the row
//! again, and never lets a row's first copy reach a partition after a higher number of
//! its source (see `outbox/sequence.rs`). So a numbered copy at or below the highest
//! number applied from its source is a duplicate. The consumer keeps that number per
//! (group, topic, partition, source) in `rk_watermarks`, locked and raised in the
//! handler's transaction: two statements per batch, whatever its size, instead of one
//! deduplication row per record.
//!
//! Records without a number (other producers, re-driven copies, replays of parked
//! records), copies in retry topics and records of key-blocking handlers (processed out
//! of partition order) keep the deduplication row. A watermark created while its group
//! has deduplication rows (the group ran in row mode) is in a bootstrap window for the
//! rows' retention: its numbered records write deduplication rows too, so that none
//! processed in row mode and delivered again (offsets not committed, the relay sending
//! its backlog again) is applied twice.

use std::collections::{HashMap, HashSet};

use rdkafka::message::{Headers, Message};
use uuid::Uuid;

use super::pipeline::Pipeline;
use crate::Backend;

/// A record's relay sequence number: (source, number).
pub(crate) type Number = (String, i64);

/// The relay sequence number of `msg` (header [`crate::headers::RELAY_SEQ`]), when it
/// has one that parses.
pub(crate) fn relay_seq<M: Message>(msg: &M) -> Option<Number> {
    let h = msg.headers()?;
    let value = h.iter().filter(|h| h.key == crate::headers::RELAY_SEQ).last()?.value?;
    parse(value).map(|(s, n)| (s.to_owned(), n))
}

/// `<source>:<n>` with a non-empty source and `n` ≥ 1.
pub(crate) fn parse(value: &[u8]) -> Option<(&str, i64)> {
    let (source, n) = std::str::from_utf8(value).ok()?.rsplit_once(':')?;
    let n: i64 = n.parse().ok().filter(|n| *n > 0)?;
    (!source.is_empty()).then_some((source, n))
}

/// The watermarks of one partition's sources within one transaction.
#[derive(Debug, Default)]
pub(crate) struct Marks {
    /// Source → (highest number applied, in its bootstrap window).
    marks: HashMap<String, (i64, bool)>,
    raised: HashSet<String>,
}

impl Marks {
    /// The marks as read (and locked) from the store.
    pub(crate) fn new(rows: Vec<(String, i64, bool)>) -> Self {
        Marks { marks: rows.into_iter().map(|(s, n, created)| (s, (n, created))).collect(), raised: HashSet::new() }
    }

    /// Whether `source`'s watermark is in its bootstrap window (its numbered records
    /// need the deduplication row too).
    pub(crate) fn bootstrap(&self, source: &str) -> bool {
        self.marks.get(source).is_none_or(|m| m.1)
    }

    /// Whether number `n` of `source` is above the source's mark; raises the mark to it
    /// when it is (a record is admitted once).
    pub(crate) fn admit(&mut self, source: &str, n: i64) -> bool {
        let mark = self.marks.entry(source.to_owned()).or_insert((0, true));
        if n <= mark.0 {
            return false;
        }
        mark.0 = n;
        self.raised.insert(source.to_owned());
        true
    }

    /// The marks raised: (sources, numbers).
    pub(crate) fn raised(&self) -> (Vec<String>, Vec<i64>) {
        self.raised.iter().map(|s| (s.clone(), self.marks[s].0)).unzip()
    }
}

impl<DB: Backend> Pipeline<DB> {
    /// Which records of one partition are new, in one transaction: `numbers[i]` is
    /// record `i`'s relay number where the watermark applies to it (see the module
    /// documentation), `ids[i]` its message id. Locks the sources' watermarks; the
    /// returned marks are written by [`Pipeline::raise`] before the commit.
    pub(crate) async fn admit(
        &self,
        conn: &mut DB::Connection,
        (topic, partition): (&str, i32),
        ids: &[Uuid],
        numbers: &[Option<Number>],
    ) -> Result<(Vec<bool>, Marks), sqlx::Error> {
        if crate::fault::sabotaged(crate::fault::SABOTAGE_NO_DEDUP) {
            return Ok((vec![true; ids.len()], Marks::default()));
        }
        let mut sources: Vec<&str> = numbers.iter().flatten().map(|(s, _)| s.as_str()).collect();
        sources.sort_unstable();
        sources.dedup();
        let mut marks = if sources.is_empty() {
            Marks::default()
        } else {
            // Sorted, so that two transactions of one partition lock in the same order.
            let retention = self.processed_retention;
            Marks::new(
                DB::lock_watermarks(conn, &self.dedup_sql, retention, &self.group, topic, partition, &sources).await?,
            )
        };
        let rows: Vec<Uuid> = ids
            .iter()
            .zip(numbers)
            .filter(|(_, n)| n.as_ref().is_none_or(|(s, _)| marks.bootstrap(s)))
            .map(|(id, _)| *id)
            .collect();
        let new_rows = if rows.is_empty() {
            HashSet::new()
        } else {
            DB::insert_dedup_batch(conn, &self.dedup_sql, &self.group, &rows).await?
        };
        let admitted = ids
            .iter()
            .zip(numbers)
            .map(|(id, n)| match n {
                None => new_rows.contains(id),
                Some((source, n)) => {
                    let bootstrap = marks.bootstrap(source);
                    marks.admit(source, *n) && (!bootstrap || new_rows.contains(id))
                }
            })
            .collect();
        Ok((admitted, marks))
    }

    /// Writes the marks [`Pipeline::admit`] raised.
    pub(crate) async fn raise(
        &self,
        conn: &mut DB::Connection,
        (topic, partition): (&str, i32),
        marks: &Marks,
    ) -> Result<(), sqlx::Error> {
        let (sources, seqs) = marks.raised();
        if sources.is_empty() {
            return Ok(());
        }
        DB::raise_watermarks(conn, &self.group, topic, partition, &sources, &seqs).await
    }

    /// The relay number of `msg` where the watermark applies to it: the container is in
    /// watermark mode, the topic is not a retry topic and the handler not key-blocking.
    pub(crate) fn number_of<M: Message>(&self, msg: &M, retry_stage: bool, key_blocking: bool) -> Option<Number> {
        (self.watermark && !retry_stage && !key_blocking).then(|| relay_seq(msg)).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_from_the_right_and_reject_what_is_not_one() {
        assert_eq!(parse(b"0190a1b2/3:42"), Some(("0190a1b2/3", 42)));
        assert_eq!(parse(b"a:b:7"), Some(("a:b", 7)));
        for bad in [&b"7"[..], b":7", b"s:0", b"s:-1", b"s:x", b"s:", b"\xff:1"] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_mark_admits_each_number_above_it_once_and_reports_what_it_raised() {
        let mut m = Marks::new(vec![("a".into(), 5, false), ("b".into(), 0, true)]);
        assert!(!m.bootstrap("a") && m.bootstrap("b") && m.bootstrap("unseen"));
        assert!(!m.admit("a", 5), "at the mark: a duplicate");
        assert!(!m.admit("a", 3), "below it: a duplicate");
        assert!(m.admit("a", 9));
        assert!(!m.admit("a", 9), "a second copy in the same batch");
        assert!(m.admit("a", 11), "gaps are allowed");
        assert!(m.admit("b", 1));
        let (mut sources, _) = m.raised();
        sources.sort();
        assert_eq!(sources, ["a", "b"]);
        assert_eq!(m.marks["a"].0, 11);
        assert!(Marks::default().raised().0.is_empty());
    }
}
