//! The commit delay (`store.commit_delay_us`): when the commit thread is
//! free and the open batch holds fewer ops than the last one, the batch
//! waits a little for more, so that a steady load (a few thousand events a
//! second, or a few clients each publishing one at a time) shares commits
//! instead of paying a commit, its `fdatasync`s and its thread wake-ups per
//! op or two.
//!
//! A batch waits, up to `opened + delay`, only while
//! - it holds fewer ops than the batch before it: the clients answered by
//!   the last commit are likely to send again at once (a few clients
//!   publishing one at a time end up sharing every commit), and a lone
//!   client that waits for each reply (last batch: one op) never waits;
//! - and the time between ops (a moving average) says the next one is due
//!   before the deadline, so a sparse load does not wait for nothing.
//!
//! Pure: the caller passes the clock readings, so the rules are tested with
//! tables.

use std::time::{Duration, Instant};

/// The largest commit delay the configuration accepts, µs.
pub const MAX_COMMIT_DELAY_US: u64 = 10_000;

/// The weight of the newest gap in the moving average, out of 8.
const NEW_GAP_EIGHTHS: u32 = 2;

/// A gap longer than this counts as this (an idle minute must not keep
/// the average high for long after the load returns).
const LONGEST_GAP: Duration = Duration::from_millis(100);

/// What the writer has learnt about the arrival of ops.
#[derive(Debug, Clone)]
pub(crate) struct Trigger {
    delay: Duration,
    /// Moving average of the time between ops.
    gap: Option<Duration>,
    last: Option<Instant>,
    /// Ops in the last sealed batch.
    last_ops: usize,
}

impl Trigger {
    /// A trigger that waits at most `delay` (zero: never waits).
    pub(crate) fn new(delay: Duration) -> Self {
        Trigger {
            delay,
            gap: None,
            last: None,
            last_ops: 0,
        }
    }

    /// An op was taken from the queue at `at`.
    pub(crate) fn arrived(&mut self, at: Instant) {
        if let Some(last) = self.last {
            let gap = at.saturating_duration_since(last).min(LONGEST_GAP);
            self.gap = Some(match self.gap {
                None => gap,
                Some(avg) => (avg * (8 - NEW_GAP_EIGHTHS) + gap * NEW_GAP_EIGHTHS) / 8,
            });
        }
        self.last = Some(at);
    }

    /// How much longer a batch of `ops` ops opened at `opened`, whose
    /// commit thread is free, should wait for another op at `now`; zero
    /// means seal it now.
    pub(crate) fn wait_left(&self, opened: Instant, now: Instant, ops: usize) -> Duration {
        if self.delay.is_zero() || ops >= self.last_ops {
            return Duration::ZERO;
        }
        // (A delay past what an `Instant` can hold never waits rather than
        // panicking.)
        let Some(deadline) = opened.checked_add(self.delay) else {
            return Duration::ZERO;
        };
        match (self.last, self.gap) {
            (Some(last), Some(gap)) if last.checked_add(gap).is_some_and(|n| n <= deadline) => {
                deadline.saturating_duration_since(now)
            }
            _ => Duration::ZERO,
        }
    }

    /// A batch of `ops` ops was sealed.
    pub(crate) fn sealed(&mut self, ops: usize) {
        self.last_ops = ops;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// A trigger that has seen ops `gap` apart, the last at `t0`, and
    /// sealed a batch of `last_ops`.
    fn steady(delay: u64, gap: u64, last_ops: usize, t0: Instant) -> Trigger {
        let mut t = Trigger::new(us(delay));
        for i in (0..8).rev() {
            t.arrived(t0 - us(gap * i));
        }
        t.sealed(last_ops);
        t
    }

    #[test]
    fn waits_only_for_a_batch_like_the_last_and_an_op_due_before_the_deadline() {
        let t0 = Instant::now();
        // (delay, gap between ops, ops in the last batch, ops in this one,
        // time since this one opened, wait left), µs
        let table = [
            (0, 100, 4, 1, 0, 0),           // no delay configured
            (500, 100, 4, 1, 0, 500),       // ops every 0.1 ms: wait the whole delay
            (500, 100, 4, 3, 200, 300),     // part of it has gone
            (500, 100, 4, 4, 200, 0),       // as many ops as the last batch
            (500, 100, 4, 5, 200, 0),       // more
            (500, 100, 1, 1, 0, 0),         // one at a time: never waits
            (500, 100, 4, 1, 500, 0),       // at the deadline
            (500, 100, 4, 1, 600, 0),       // past it
            (500, 500, 4, 1, 0, 500),       // next op due exactly at the deadline
            (500, 501, 4, 1, 0, 0),         // one µs past it: not worth waiting
            (10_000, 700, 2, 1, 0, 10_000), // the largest delay
        ];
        for (delay, gap, last_ops, ops, since_open, left) in table {
            let t = steady(delay, gap, last_ops, t0);
            assert_eq!(
                t.wait_left(t0, t0 + us(since_open), ops),
                us(left),
                "delay {delay} µs, gap {gap} µs, last batch {last_ops}, this one {ops}, \
                 {since_open} µs after opening"
            );
        }
    }

    #[test]
    fn a_delay_no_instant_can_hold_never_waits() {
        let t0 = Instant::now();
        let mut t = steady(0, 100, 4, t0);
        t.delay = Duration::MAX;
        assert_eq!(t.wait_left(t0, t0, 1), Duration::ZERO);
    }

    #[test]
    fn a_batch_that_waited_for_nothing_stops_the_next_from_waiting() {
        let t0 = Instant::now();
        let mut t = steady(1_000, 100, 3, t0);
        assert_eq!(t.wait_left(t0, t0, 1), us(1_000));
        // It waited and sealed alone: the clients were one.
        t.sealed(1);
        assert_eq!(t.wait_left(t0, t0, 1), Duration::ZERO);
        // A batch of several (ops that arrived while the commit thread was
        // busy) lets the next wait again.
        t.sealed(2);
        assert_eq!(t.wait_left(t0, t0, 1), us(1_000));
    }

    #[test]
    fn the_gap_is_a_moving_average_with_long_pauses_capped() {
        let t0 = Instant::now();
        let mut t = Trigger::new(us(1_000));
        t.arrived(t0);
        t.arrived(t0 + us(100));
        assert_eq!(t.gap, Some(us(100)));
        let back = t0 + us(200) + Duration::from_secs(60);
        t.arrived(back);
        // 6/8 of 100 µs plus 2/8 of the 100 ms cap.
        assert_eq!(t.gap, Some(us(75) + us(25_000)));
        // The next op is not expected within the delay: no wait.
        t.sealed(4);
        assert_eq!(t.wait_left(back, back, 1), Duration::ZERO);
        // Steady ops bring it back under the delay within a few dozen.
        let mut at = t0 + Duration::from_secs(61);
        for _ in 0..40 {
            at += us(100);
            t.arrived(at);
        }
        assert!(t.gap.is_some_and(|g| g < us(1_000)), "{:?}", t.gap);
    }
}
