//! A model of the watermark protocol (`sequence.rs`, `consumer/watermark.rs`): a relay
//! numbering rows of one shard over several partitions, producers that fail (fatally:
//! the broker keeps a prefix of each partition's sends; or not: the record was not
//! written), relays that crash between send and settle, and a consumer deduplicating
//! with the real [`Marks`]. No row may be lost, and every row must be applied exactly
//! once but one kind: a row that kept its number through a fatal error or a crash (its
//! copy may have been written) and is then refused outright gets a new number, and is applied
//! twice if that copy was written: a duplicate rather than a loss (`sequence.rs`,
//! rule 4). Two sabotaged relays show that the checks can fail.

use std::collections::HashMap;

use proptest::prelude::*;

use crate::consumer::watermark::Marks;

const PARTITIONS: usize = 3;
const SOURCE: &str = "s/0";

/// What happens to one batch.
#[derive(Debug, Clone)]
enum Fault {
    None,
    /// The producer stops with a fatal error: of each partition's records in the
    /// batch, the broker kept a prefix of this length (modulo the count).
    Fatal(Vec<usize>),
    /// The record at this index (modulo the batch) is refused without a fatal error:
    /// not written. librdkafka's gapless guarantee makes it fatal when a later record
    /// of its partition is in the batch; `gapless: false` lets the later ones through.
    Refused(usize),
    /// The relay dies after the broker kept a prefix of each partition's records,
    /// before the settle.
    Crash(Vec<usize>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Relay {
    /// As built: fatal failures keep their numbers, refusals get new ones.
    AsBuilt,
    /// Every failed row gets a new number (a fatal error's written copies are applied
    /// twice).
    AlwaysRenumber,
    /// No row ever gets a new number, and the producer leaves gaps (no gapless
    /// guarantee): a refused row's resend falls below the watermark.
    NeverRenumberWithGaps,
}

#[derive(Debug, Default)]
struct World {
    /// Per row: its number, delivered.
    rows: Vec<(Option<i64>, bool)>,
    counter: i64,
    /// Per partition: (row, number) in log order.
    logs: Vec<Vec<(usize, i64)>>,
    /// Per partition: the consumer's position and marks (committed with the effects).
    consumer: Vec<(usize, Marks)>,
    applied: HashMap<usize, u32>,
    /// Rows whose number was kept through a fatal error or a crash.
    kept: std::collections::HashSet<usize>,
    /// Rows renumbered after that: a second application is explained.
    excused: std::collections::HashSet<usize>,
}

fn partition(row: usize) -> usize {
    (row * 7 + row / 3) % PARTITIONS
}

impl World {
    fn new(rows: usize) -> Self {
        World {
            rows: vec![(None, false); rows],
            logs: vec![Vec::new(); PARTITIONS],
            consumer: (0..PARTITIONS).map(|_| (0, Marks::default())).collect(),
            ..World::default()
        }
    }

    /// One batch: claim (numbered rows first, by number; then new rows), number, send
    /// in order, fail as `fault` says, settle.
    fn relay(&mut self, batch: usize, fault: &Fault, relay: Relay) {
        let mut pending: Vec<usize> = (0..self.rows.len()).filter(|r| !self.rows[*r].1).collect();
        pending.sort_by_key(|r| (self.rows[*r].0.is_none(), self.rows[*r].0, *r));
        pending.truncate(batch);
        if pending.is_empty() {
            return;
        }
        for r in &pending {
            if self.rows[*r].0.is_none() {
                self.counter += 1;
                self.rows[*r].0 = Some(self.counter);
            }
        }
        // Per record: written, and (when failed) whether the producer was fatal.
        let mut written = vec![true; pending.len()];
        let mut fatal = false;
        let mut settle = true;
        let prefix = |cut: &[usize], written: &mut Vec<bool>| {
            for p in 0..PARTITIONS {
                let of_p: Vec<usize> = (0..pending.len()).filter(|i| partition(pending[*i]) == p).collect();
                let keep = cut.get(p).copied().unwrap_or(0) % (of_p.len() + 1);
                of_p.iter().skip(keep).for_each(|i| written[*i] = false);
            }
        };
        match fault {
            Fault::None => {}
            Fault::Fatal(cut) => {
                prefix(cut, &mut written);
                fatal = true;
            }
            Fault::Crash(cut) => {
                prefix(cut, &mut written);
                settle = false;
            }
            Fault::Refused(i) => {
                let i = i % pending.len();
                let p = partition(pending[i]);
                let later = (i + 1..pending.len()).any(|j| partition(pending[j]) == p);
                if later && relay != Relay::NeverRenumberWithGaps {
                    // The gapless guarantee: the failure stops the producer, and the
                    // broker kept the records before it.
                    (i..pending.len()).filter(|j| partition(pending[*j]) == p).for_each(|j| written[j] = false);
                    fatal = true;
                } else {
                    written[i] = false;
                }
            }
        }
        for (i, r) in pending.iter().enumerate() {
            if written[i] {
                self.logs[partition(*r)].push((*r, self.rows[*r].0.expect("numbered")));
            }
        }
        if !settle {
            self.kept.extend(pending.iter().copied());
            return;
        }
        // A fatal error fails every record of the batch (written or not: the
        // acknowledgement may not have come).
        for (i, r) in pending.iter().enumerate() {
            if written[i] && !fatal {
                self.rows[*r].1 = true;
                continue;
            }
            let renumber = match relay {
                Relay::AsBuilt => !fatal,
                Relay::AlwaysRenumber => true,
                Relay::NeverRenumberWithGaps => false,
            };
            if renumber {
                self.rows[*r].0 = None;
                if self.kept.contains(r) {
                    self.excused.insert(*r);
                }
            } else if fatal {
                self.kept.insert(*r);
            }
        }
    }

    /// The consumer reads up to `n` records of partition `p`.
    fn consume(&mut self, p: usize, n: usize) {
        let (pos, marks) = &mut self.consumer[p];
        let end = pos.saturating_add(n).min(self.logs[p].len());
        for (row, number) in &self.logs[p][*pos..end] {
            if marks.admit(SOURCE, *number) {
                *self.applied.entry(*row).or_default() += 1;
            }
        }
        *pos = end;
    }

    /// Runs the relay without faults and the consumer to the end.
    fn drain(&mut self, relay: Relay) {
        for _ in 0..self.rows.len() + 1 {
            self.relay(4, &Fault::None, relay);
        }
        (0..PARTITIONS).for_each(|p| self.consume(p, usize::MAX));
    }

    /// Rows lost or applied more than once without excuse: (row, times).
    fn wrong(&self) -> Vec<(usize, u32)> {
        (0..self.rows.len())
            .map(|r| (r, self.applied.get(&r).copied().unwrap_or(0)))
            .filter(|(r, n)| *n == 0 || (*n > 1 && !self.excused.contains(r)))
            .collect()
    }
}

fn fault() -> impl Strategy<Value = Fault> {
    let cut = proptest::collection::vec(0usize..5, PARTITIONS);
    prop_oneof![
        3 => Just(Fault::None),
        1 => cut.clone().prop_map(Fault::Fatal),
        1 => (0usize..8).prop_map(Fault::Refused),
        1 => cut.prop_map(Fault::Crash),
    ]
}

fn run(rows: usize, steps: &[(usize, Fault, usize, usize)], relay: Relay) -> Vec<(usize, u32)> {
    let mut w = World::new(rows);
    for (batch, fault, p, n) in steps {
        w.relay(*batch, fault, relay);
        w.consume(*p, *n);
    }
    w.drain(relay);
    w.wrong()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_row_is_applied_once_whatever_fails(
        rows in 1usize..14,
        steps in proptest::collection::vec((1usize..6, fault(), 0..PARTITIONS, 0usize..6), 0..12),
    ) {
        prop_assert_eq!(run(rows, &steps, Relay::AsBuilt), vec![]);
    }
}

#[test]
fn a_relay_that_renumbers_after_a_fatal_error_applies_written_rows_twice() {
    // Row 0 and 1 go to partitions 0 and 1; the broker keeps both, then the producer
    // stops: both are sent again.
    let steps = [(2, Fault::Fatal(vec![1, 1, 1]), 0, 0)];
    assert!(run(2, &steps, Relay::AsBuilt).is_empty());
    assert!(!run(2, &steps, Relay::AlwaysRenumber).is_empty(), "duplicates expected");
}

#[test]
fn a_relay_that_keeps_a_refused_rows_number_past_a_gap_loses_it() {
    // Rows 0 and 5 share partition 0 (`partition`): 0 is refused, 5 written; row 0
    // sent again keeps a number below 5's.
    assert_eq!((partition(0), partition(5)), (0, 0));
    let steps = [(6, Fault::Refused(0), 0, 9)];
    assert!(run(6, &steps, Relay::AsBuilt).is_empty());
    assert_eq!(run(6, &steps, Relay::NeverRenumberWithGaps), vec![(0, 0)], "row 0 swallowed");
}
