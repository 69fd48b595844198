//! The journal times cluster mode's applier keeps for the stale-proposal
//! rule (`super::replica`): the stream's stored time of every message
//! applied, until it is older than the rule can need. They are stored
//! with the local batches, so a restarted or copied replica holds the same
//! times as the others and decides without asking the stream (which may
//! have compacted them away).
//!
//! Architecture Invariant: a time is dropped only when it is older than the
//! newest kept one by more than [`KeptTimes::keep_micros`] (twice
//! `stale_after` plus a margin for clock differences between the NATS
//! nodes), so "`seen + 1` was dropped" decides "stale" exactly as the time
//! itself would — whatever each replica's grouping of messages into local
//! batches, and whatever its own `stale_after`.

use std::collections::BTreeMap;
use std::time::Duration;

/// The margin kept beyond twice `stale_after`.
const MARGIN: Duration = Duration::from_secs(60);

/// Kept journal times.
#[derive(Debug)]
pub(super) struct KeptTimes {
    stale_after_micros: i64,
    keep_micros: i64,
    /// Journal sequence → stored time (µs).
    times: BTreeMap<u64, i64>,
    /// Times remembered since the last [`KeptTimes::take_changes`].
    new_times: Vec<(u64, i64)>,
    /// Every time at or below this sequence was dropped.
    dropped_through: u64,
    /// Whether `dropped_through` moved since the last take.
    dropped_moved: bool,
}

/// What the rule says of a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Applied.
    Fresh,
    /// Refused as a whole.
    Stale,
    /// The time of `seen + 1` is not kept here (a store written before
    /// times were kept): read it from the stream and ask [`KeptTimes::decide`].
    Unknown,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl KeptTimes {
    /// The times a store kept, and through which sequence it dropped them.
    pub(super) fn new(stale_after: Duration, kept: Vec<(u64, i64)>, dropped_through: u64) -> Self {
        KeptTimes {
            stale_after_micros: micros(stale_after),
            keep_micros: micros(stale_after.saturating_mul(2).saturating_add(MARGIN)),
            times: kept.into_iter().collect(),
            new_times: Vec::new(),
            dropped_through,
            dropped_moved: false,
        }
    }

    /// Remembers message `sequence`'s stored time.
    pub(super) fn remember(&mut self, sequence: u64, time: i64) {
        self.times.insert(sequence, time);
        self.new_times.push((sequence, time));
    }

    /// The rule for a message stored at `time` whose proposer had applied
    /// through `seen`.
    pub(super) fn verdict(&self, seen: u64, sequence: u64, time: i64) -> Verdict {
        let first_unseen = seen.saturating_add(1);
        if first_unseen >= sequence {
            return Verdict::Fresh;
        }
        match self.times.get(&first_unseen) {
            Some(&t) => self.decide(t, time),
            None if first_unseen <= self.dropped_through => Verdict::Stale,
            None => Verdict::Unknown,
        }
    }

    /// Stale when message `seen + 1` was stored more than `stale_after`
    /// before the message judged.
    pub(super) fn decide(&self, first_unseen_time: i64, time: i64) -> Verdict {
        if time.saturating_sub(first_unseen_time) > self.stale_after_micros {
            Verdict::Stale
        } else {
            Verdict::Fresh
        }
    }

    /// Drops the times too old to matter, then gives what to store with
    /// the batch being sealed: the new times still kept, and the sequence
    /// through which times were dropped if it moved.
    pub(super) fn take_changes(&mut self) -> (Vec<(u64, i64)>, Option<u64>) {
        if let Some((_, &newest)) = self.times.last_key_value() {
            let horizon = newest.saturating_sub(self.keep_micros);
            while let Some((&seq, &time)) = self.times.first_key_value() {
                if time >= horizon {
                    break;
                }
                self.times.pop_first();
                self.dropped_through = self.dropped_through.max(seq);
                self.dropped_moved = true;
            }
        }
        let dropped = self.dropped_through;
        let new = std::mem::take(&mut self.new_times)
            .into_iter()
            .filter(|(seq, _)| *seq > dropped)
            .collect();
        let moved = std::mem::take(&mut self.dropped_moved).then_some(dropped);
        (new, moved)
    }

    /// How many times are kept (a bound checked by the tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.times.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const S: i64 = 1_000_000; // one second in µs

    fn kept(stale_after_secs: u64) -> KeptTimes {
        KeptTimes::new(Duration::from_secs(stale_after_secs), Vec::new(), 0)
    }

    #[test]
    fn the_rule_by_table() {
        let mut k = kept(5);
        for (seq, t) in [(1, 0), (2, S), (3, 2 * S), (4, 10 * S)] {
            k.remember(seq, t);
        }
        // (seen, sequence judged, its time, verdict)
        let cases = [
            (3, 4, 10 * S, Verdict::Fresh),    // nothing unseen
            (2, 4, 10 * S, Verdict::Stale),    // 3 stored 8 s before
            (2, 4, 7 * S, Verdict::Fresh),     // 3 stored exactly 5 s before
            (2, 4, 7 * S + 1, Verdict::Stale), // just past
            (0, 5, 4 * S, Verdict::Fresh),     // 1 stored 4 s before
            (9, 12, 20 * S, Verdict::Unknown), // 10 never kept here
        ];
        for (seen, seq, time, want) in cases {
            assert_eq!(
                k.verdict(seen, seq, time),
                want,
                "seen {seen}, message {seq} at {time}"
            );
        }
    }

    #[test]
    fn dropped_times_decide_stale_as_the_time_would() {
        // stale_after 1 s: kept for 2 s + 60 s after the newest.
        let mut k = kept(1);
        k.remember(1, 0);
        k.remember(2, 10 * S);
        k.remember(3, 70 * S);
        let (new, dropped) = k.take_changes();
        // 1 is older than 70 s − 62 s = 8 s: dropped; 2 is kept.
        assert_eq!(dropped, Some(1));
        assert_eq!(new, vec![(2, 10 * S), (3, 70 * S)]);
        assert_eq!(k.len(), 2);
        // A proposal that had not seen 1, judged at 71 s: the time itself
        // would say stale (71 s > 1 s), and so does its absence.
        assert_eq!(k.verdict(0, 4, 71 * S), Verdict::Stale);
        assert_eq!(k.decide(0, 71 * S), Verdict::Stale);
        // Nothing more to drop or store.
        assert_eq!(k.take_changes(), (Vec::new(), None));
    }

    #[test]
    fn a_reloaded_store_decides_as_the_running_one() {
        let mut running = kept(1);
        for seq in 1..=200u64 {
            running.remember(seq, i64::try_from(seq).unwrap() * S);
        }
        let (stored, dropped) = running.take_changes();
        let reloaded = KeptTimes::new(Duration::from_secs(1), stored, dropped.unwrap());
        for seen in 0..200u64 {
            for time in [150 * S, 200 * S, 201 * S] {
                assert_eq!(
                    running.verdict(seen, 201, time),
                    reloaded.verdict(seen, 201, time),
                    "seen {seen} at {time}"
                );
            }
        }
    }

    #[test]
    fn times_stay_bounded_by_age() {
        let mut k = kept(1);
        for seq in 1..=10_000u64 {
            k.remember(seq, i64::try_from(seq).unwrap() * S / 10); // 10 per second
            let _ = k.take_changes();
        }
        // 62 s at 10 per second, and one more at the edge.
        assert!(k.len() <= 621, "{}", k.len());
    }
}
