//! A memory target below the process's resident set makes the allocator
//! hand freed memory back at once (a test binary of its own: the purge
//! delay is process-wide).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use caseshare_alloc::{MemoryTarget, MiMalloc, purge_delay, resident_bytes};

#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

const MIB: u64 = 1 << 20;

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn above_the_target_freed_memory_goes_back_at_once() {
    let normal = purge_delay();
    assert!(
        normal > 0,
        "mimalloc's delay before any target: {normal} ms"
    );
    // 64 MiB touched and freed under the normal delay: still resident.
    let block = vec![1u8; (64 * MIB) as usize];
    let touched = resident_bytes().unwrap();
    drop(block);
    let kept = resident_bytes().unwrap();
    eprintln!(
        "delay {normal} ms: {} MiB resident with the block, {} MiB after freeing it",
        touched / MIB,
        kept / MIB
    );
    assert!(
        kept + 48 * MIB > touched,
        "the normal delay keeps a freed block: {} MiB after, {} MiB before",
        kept / MIB,
        touched / MIB
    );

    // A target of 1 MiB is below any process: purging starts.
    assert!(MemoryTarget::new(MIB).spawn().unwrap());
    wait_for("the delay set to 0", || purge_delay() == 0);
    // What the normal delay kept is purged as the target starts.
    let after_start = resident_bytes().unwrap();
    assert!(
        after_start + 48 * MIB < touched,
        "{} MiB resident once purging started, {} MiB with the block",
        after_start / MIB,
        touched / MIB
    );
    // And a block freed now goes back as it is freed.
    let block = vec![1u8; (64 * MIB) as usize];
    let with = resident_bytes().unwrap();
    drop(block);
    let without = resident_bytes().unwrap();
    eprintln!(
        "delay 0: {} MiB with a new block, {} MiB just after freeing it",
        with / MIB,
        without / MIB
    );
    assert!(
        without + 48 * MIB < with,
        "freed at once: {} MiB after, {} MiB before",
        without / MIB,
        with / MIB
    );
}
