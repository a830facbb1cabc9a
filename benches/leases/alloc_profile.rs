//! A counting global allocator for the scale cells, compiled only with
//! `RUSTFLAGS="--cfg leases_alloc_profile"`: the live allocations each held lease adds,
//! by requested size in 16-byte classes, and the bytes in allocations above 4 KiB (hash
//! tables, vectors). It costs atomics on every allocation, so the measured runs never
//! have it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

/// Size classes of 16 bytes up to this many; larger allocations are counted in bytes.
const CLASSES: usize = 257;

static LIVE: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];
static LARGE_BYTES: AtomicI64 = AtomicI64::new(0);

struct Counting;

fn count(size: usize, by: i64) {
    match size.div_ceil(16) {
        class if class < CLASSES => LIVE[class].fetch_add(by, Ordering::Relaxed),
        _ => LARGE_BYTES.fetch_add(by * size as i64, Ordering::Relaxed),
    };
}

// SAFETY: every call is passed on to the system allocator unchanged; only counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout.size(), -1);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout.size(), -1);
        count(new_size, 1);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The live counts now: one per size class, then the large allocations' bytes.
pub fn snapshot() -> Vec<i64> {
    LIVE.iter()
        .chain([&LARGE_BYTES])
        .map(|a| a.load(Ordering::Relaxed))
        .collect()
}

/// Prints (to stderr) what `n` leases added between two snapshots, per lease.
pub fn report(before: &[i64], after: &[i64], n: usize) {
    let per = |i: usize| (after[i] - before[i]) as f64 / n as f64;
    let mut small = 0.0;
    for class in 1..CLASSES {
        let each = per(class);
        if each.abs() > 0.05 {
            eprintln!("alloc  up to {:4} bytes: {each:5.2} per lease", class * 16);
            small += each * (class * 16) as f64;
        }
    }
    eprintln!(
        "alloc  small: at most {small:.0} bytes per lease; large: {:.1} bytes per lease",
        per(CLASSES)
    );
}
