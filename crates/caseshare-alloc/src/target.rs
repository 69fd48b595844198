//! A memory target: while the process's resident set is above a
//! configured size, the allocator hands freed memory back to the system at
//! once instead of after its delay.
//!
//! mimalloc keeps the pages a thread freed for `purge_delay` (1,000 ms in
//! mimalloc 3) so that the next burst can reuse them without faulting them
//! in again. While the broker is busy that is up to a second of freed
//! buffers held on top of what is live: with a 1M-event backlog the
//! resident set peaked 40–60 MiB above the live heap
//! (`docs/BENCHMARKS.md`). Purging at once always costs ~10 % of the
//! pipelined rate (pages are faulted in again), so this does it only while
//! the process is above its target, as Go's `GOMEMLIMIT` makes its
//! collector work harder only near the limit:
//!
//! - a thread (`alloc-target`) reads `VmRSS` every 50 ms;
//! - above the target it purges what is pending and sets the delay to 0;
//! - once the resident set is below 7/8 of the target it sets the delay
//!   back to what it was at start (mimalloc's default, or
//!   `MIMALLOC_PURGE_DELAY`).
//!
//! The target is not a limit: memory that is live stays; what the target
//! bounds is what the allocator keeps that nothing uses.

use std::time::Duration;

/// mimalloc's `purge_delay` option. `libmimalloc-sys` names mimalloc 2's
/// options only; the index is 15 in mimalloc 2 and 3 alike (checked by a
/// test against mimalloc 3's default of 1,000 ms).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How often the resident set is read.
const PERIOD: Duration = Duration::from_millis(50);

/// Keeps the process's resident set near `target_bytes` (see the module
/// documentation).
#[derive(Clone, Copy, Debug)]
pub struct MemoryTarget {
    target_bytes: u64,
}

impl MemoryTarget {
    /// A target of `target_bytes` of resident memory.
    pub fn new(target_bytes: u64) -> Self {
        MemoryTarget { target_bytes }
    }

    /// Starts the thread that keeps the target. Nothing is started (and
    /// `Ok(false)` returned) where the resident set cannot be read (no
    /// `/proc`).
    ///
    /// Call it before other threads allocate much (at start): it reads the
    /// delay to restore from mimalloc once, here.
    pub fn spawn(self) -> std::io::Result<bool> {
        if resident_bytes().is_none() {
            return Ok(false);
        }
        let normal = purge_delay();
        std::thread::Builder::new()
            .name("alloc-target".into())
            .spawn(move || self.run(normal))?;
        Ok(true)
    }

    fn run(self, normal: i64) {
        let mut purging = false;
        loop {
            std::thread::sleep(PERIOD);
            let Some(resident) = resident_bytes() else {
                return;
            };
            let next = self.purging_after(purging, resident);
            if next && !purging {
                // What is pending under the long delay is purged now: with
                // a delay of 0 mimalloc purges as memory is freed and no
                // longer visits what was scheduled before.
                crate::release_free_memory();
                set_purge_delay(0);
            } else if !next && purging {
                set_purge_delay(normal);
            }
            purging = next;
        }
    }

    /// Whether the allocator purges at once after a reading of `resident`
    /// bytes, given whether it did before: from above the target until
    /// below 7/8 of it, so that a process near its target does not switch
    /// at every reading.
    fn purging_after(&self, purging: bool, resident: u64) -> bool {
        if purging {
            resident >= self.target_bytes - self.target_bytes / 8
        } else {
            resident > self.target_bytes
        }
    }
}

/// This process's resident set, from `VmRSS` in `/proc/self/status`.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// mimalloc's purge delay now, in ms (0 while above a [`MemoryTarget`]).
pub fn purge_delay() -> i64 {
    // SAFETY: `mi_option_get` takes an option index below `_mi_option_last`
    // (15 is) and reads mimalloc's option table, reading the environment
    // the first time.
    #[allow(unsafe_code)]
    let delay = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
    // A C `long`: `i64` here, `i32` on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    i64::from(delay)
}

/// Sets mimalloc's purge delay (ms; 0 purges as memory is freed).
fn set_purge_delay(ms: i64) {
    #[allow(clippy::useless_conversion, clippy::unnecessary_fallible_conversions)]
    let ms = std::os::raw::c_long::try_from(ms).unwrap_or(std::os::raw::c_long::MAX);
    // SAFETY: `mi_option_set` stores one aligned `long` in mimalloc's
    // option table (and marks it initialised). Other threads read that
    // value with a plain load when they next free or purge; on the 64-bit
    // targets the broker is built for an aligned word store is atomic, so
    // a thread sees the old delay or the new one, and either is a valid
    // delay. Only the `alloc-target` thread ever sets it.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, ms)
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_option_index_is_the_purge_delay() {
        // mimalloc 3's purge delay defaults to 1,000 ms; the options on
        // either side of index 15 default to 1 and 0.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay(), 1_000);
        }
    }

    #[test]
    fn purging_starts_above_the_target_and_stops_below_seven_eighths() {
        let t = MemoryTarget::new(800);
        // Not purging: at the target, stay; one byte past it, start.
        assert!(!t.purging_after(false, 800));
        assert!(t.purging_after(false, 801));
        assert!(!t.purging_after(false, 0));
        // Purging: at 7/8 of it keep on; one byte below, stop.
        assert!(t.purging_after(true, 700));
        assert!(!t.purging_after(true, 699));
        assert!(t.purging_after(true, 5_000));
    }

    #[test]
    fn the_resident_set_is_read() {
        let r = resident_bytes().expect("/proc/self/status on Linux");
        assert!(r > 1 << 20, "{r} bytes resident");
    }
}
