//! The allocator of the `caseshare` and `caseshare-bench` binaries, and
//! handing its freed memory back to the system once a burst is over.
//!
//! mimalloc keeps the pages a burst freed for `purge_delay` (1 s in
//! mimalloc 3) and returns them only when the thread that owns them next
//! allocates or frees — and a page freed by another thread (a request
//! decoded on a runtime worker, freed by the commit thread) still belongs
//! to the thread that allocated it. The broker's busy threads (the writer,
//! the commit thread, the runtime's workers) go quiet when the load stops,
//! so after a burst of publishing the process kept tens of MiB it no
//! longer used for as long as it stayed idle (`docs/BENCHMARKS.md`,
//! "Memory after a burst"). Purging at once instead costs 15–30 % of the
//! throughput (measured there), so the delay stays and each busy thread
//! collects for itself:
//!
//! - [`release_free_memory`]: the calling thread's free pages and every
//!   arena's freed memory, now. The writer and the commit thread call it
//!   after their first idle second that follows work.
//! - [`on_park`]: for a runtime's `on_thread_park`: a worker that parks
//!   collects if an [`IdleRelease`] asked every thread to since it last
//!   did.
//! - [`IdleRelease`]: a thread that reads the process's CPU time every
//!   second and, after the first nearly idle second that follows work,
//!   releases, asks every thread to, and calls a waker (the `caseshare`
//!   binary's spawns a few empty tasks so that parked workers wake, run
//!   them and collect as they park again). It reads the CPU time with
//!   [`cpu_time`], which the bench uses too.
//! - [`MemoryTarget`]: while the resident set is above a configured
//!   target, freed memory goes back to the system at once (module
//!   `target`).
//!
//! Architecture Invariant: this crate holds the workspace's only `unsafe`
//! code, three calls into mimalloc's C API (`mi_collect`, and getting and
//! setting the purge delay); every other crate forbids it.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use mimalloc::MiMalloc;
pub use target::{MemoryTarget, purge_delay, resident_bytes};

mod target;

/// Bumped by [`IdleRelease`] when every thread should collect.
static EPOCH: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The [`EPOCH`] this thread last collected in.
    static SEEN: Cell<u64> = const { Cell::new(0) };
}

/// For `tokio::runtime::Builder::on_thread_park`: collects this thread's
/// free pages if an [`IdleRelease`] asked every thread to since it last
/// did. Otherwise only a thread-local read and an atomic load: a busy
/// runtime pays nothing more (collecting once a second as well cost
/// ~2 % more CPU per event at 2,000 events/s).
pub fn on_park() {
    if SEEN.with(Cell::get) != EPOCH.load(Ordering::Relaxed) {
        release_free_memory();
    }
}

/// Collects the calling thread's free pages and purges the freed memory
/// of every thread's arenas now, instead of after mimalloc's delay.
pub fn release_free_memory() {
    SEEN.with(|seen| seen.set(EPOCH.load(Ordering::Relaxed)));
    // SAFETY: `mi_collect` takes a plain bool, touches only mimalloc's own
    // structures and is documented as callable from any thread at any
    // time; it does not free memory still in use.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

/// When a quiet period after work releases free memory: a period of 1 s,
/// idle below 5 % of a core, after at least 200 ms of work.
#[derive(Clone, Copy)]
pub struct IdleRelease {
    /// How often the process's CPU time is read.
    period: Duration,
    /// Below this share of one core over a period, the process is idle.
    idle_below: f64,
    /// CPU time the process must have used since the last release for a
    /// release to be worth it.
    worked_at_least: Duration,
}

impl Default for IdleRelease {
    fn default() -> Self {
        IdleRelease {
            period: Duration::from_secs(1),
            idle_below: 0.05,
            worked_at_least: Duration::from_millis(200),
        }
    }
}

impl IdleRelease {
    /// Starts a thread that reads the process's CPU time every `period`
    /// and releases free memory after the first idle period that follows
    /// at least `worked_at_least` of CPU time. Nothing is started (and
    /// `Ok(false)` returned) where the CPU time cannot be read (no
    /// `/proc`).
    ///
    /// `wake` is called after each release, to wake threads parked since
    /// (they collect as they park again).
    pub fn spawn(self, wake: impl Fn() + Send + 'static) -> std::io::Result<bool> {
        if process_cpu().is_none() {
            return Ok(false);
        }
        std::thread::Builder::new()
            .name("alloc-release".into())
            .spawn(move || self.run(wake))?;
        Ok(true)
    }

    fn run(self, wake: impl Fn()) {
        let mut last = process_cpu().unwrap_or_default();
        let mut since_release = Duration::ZERO;
        loop {
            std::thread::sleep(self.period);
            let Some(now) = process_cpu() else { return };
            let used = now.saturating_sub(last);
            last = now;
            since_release += used;
            if self.should_release(used, since_release) {
                EPOCH.fetch_add(1, Ordering::Relaxed);
                release_free_memory();
                wake();
                since_release = Duration::ZERO;
                // The collecting is work too; it must not count as more.
                last = process_cpu().unwrap_or(last);
            }
        }
    }

    /// Whether a period that used `used` of CPU, after `since_release`
    /// since the last release (this period's included), ends in a release.
    fn should_release(&self, used: Duration, since_release: Duration) -> bool {
        let idle = used.as_secs_f64() < self.idle_below * self.period.as_secs_f64();
        idle && since_release >= self.worked_at_least
    }
}

/// The user and system CPU time a process (`"self"` or a pid) has used,
/// from `/proc/<pid>/stat`; `None` where it cannot be read. The bench
/// counts CPU per event with it too.
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu(&stat)
}

/// This process's CPU time.
fn process_cpu() -> Option<Duration> {
    cpu_time("self")
}

/// Clock ticks per second in `/proc` (`USER_HZ`): the kernel reports 100
/// to user space on every architecture this runs on.
const USER_HZ: u64 = 100;

/// utime and stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The
/// command name (field 2) is in parentheses and may hold spaces, so the
/// fields are counted after its closing parenthesis.
fn parse_cpu(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let t = utime.checked_add(stime)?;
    Some(Duration::from_millis(t.checked_mul(1000)? / USER_HZ))
}

/// The tests allocate through mimalloc, as the binaries do.
#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: MiMalloc = MiMalloc;

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    /// Held by the tests that release memory: a release purges every
    /// thread's freed memory, so it must not run while another test
    /// measures what a release hands back.
    static RELEASING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn rss_mib() -> f64 {
        resident_bytes().expect("VmRSS in /proc/self/status on Linux") as f64 / (1 << 20) as f64
    }

    #[test]
    fn cpu_time_is_read_after_a_name_with_spaces_and_parentheses() {
        let line = "4242 (caseshare (x) y) S 1 4242 4242 0 -1 4194560 \
                    900 0 0 0 1234 567 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_cpu(line), Some(Duration::from_millis(18_010)));
        assert_eq!(parse_cpu("4242 (x) S 1"), None);
        assert_eq!(parse_cpu("no name here"), None);
    }

    #[test]
    fn this_process_cpu_time_is_readable_and_grows() {
        let a = process_cpu().expect("/proc/self/stat on Linux");
        // Spin until the kernel has counted a tick or more (10 ms each),
        // however loaded the machine; a reading that never grows fails.
        let mut x = 0u64;
        let start = std::time::Instant::now();
        let mut b = a;
        while b <= a && start.elapsed() < Duration::from_secs(30) {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            b = process_cpu().expect("/proc/self/stat on Linux");
        }
        std::hint::black_box(x);
        assert!(b > a, "{a:?} then {b:?} after 30 s of spinning");
    }

    #[test]
    fn a_parking_thread_collects_only_when_asked() {
        let _one = RELEASING.lock().unwrap_or_else(|p| p.into_inner());
        std::thread::spawn(|| {
            let before = EPOCH.load(Ordering::Relaxed);
            SEEN.with(|s| s.set(before));
            on_park();
            assert_eq!(SEEN.with(Cell::get), before, "not asked: nothing to do");
            EPOCH.fetch_add(1, Ordering::Relaxed);
            on_park();
            assert_eq!(SEEN.with(Cell::get), before + 1, "asked: collected");
            on_park();
            assert_eq!(SEEN.with(Cell::get), before + 1);
        })
        .join()
        .expect("the thread");
    }

    #[test]
    fn a_release_needs_an_idle_period_after_enough_work() {
        let r = IdleRelease::default();
        let ms = Duration::from_millis;
        // Idle (under 50 ms of a 1 s period) after 200 ms of work: release.
        assert!(r.should_release(ms(40), ms(200)));
        assert!(r.should_release(ms(0), ms(5_000)));
        // Idle, but too little work since the last release.
        assert!(!r.should_release(ms(10), ms(199)));
        // Still busy: at the limit and past it.
        assert!(!r.should_release(ms(50), ms(5_000)));
        assert!(!r.should_release(ms(900), ms(5_000)));
    }

    #[test]
    fn releasing_hands_back_freed_pages_and_keeps_what_is_in_use() {
        // 64 MiB written and freed, 4 MiB kept, on this test's thread (no
        // other test releases meanwhile; their allocations are small).
        let _one = RELEASING.lock().unwrap_or_else(|p| p.into_inner());
        let kept: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 64 * 1024]).collect();
        let burst: Vec<Vec<u8>> = (0..1024).map(|_| vec![7u8; 64 * 1024]).collect();
        let full = rss_mib();
        drop(burst);
        let freed = rss_mib();
        release_free_memory();
        let released = rss_mib();
        println!("RSS: {full:.1} MiB with the burst, {freed:.1} freed, {released:.1} released");
        assert!(
            released + 32.0 < freed,
            "the release handed back less than half of the 64 MiB freed"
        );
        for (i, v) in kept.iter().enumerate() {
            assert!(v.iter().all(|&b| b == i as u8), "block {i} changed");
        }
    }
}
