//! Below its memory target the allocator keeps its own delay (a test
//! binary of its own: the purge delay is process-wide).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use caseshare_alloc::{MemoryTarget, MiMalloc, purge_delay, resident_bytes};

#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

#[test]
fn below_the_target_the_delay_is_left_alone() {
    let normal = purge_delay();
    let resident = resident_bytes().unwrap();
    // A target of 1 GiB above what this process holds.
    assert!(MemoryTarget::new(resident + (1 << 30)).spawn().unwrap());
    for _ in 0..20 {
        // Memory churns while the target's thread reads the resident set
        // (every 50 ms) for a second.
        drop(std::hint::black_box(vec![1u8; 8 << 20]));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(purge_delay(), normal);
    }
}
