//! A counting global allocator for this test binary: per thread, the bytes live and the peak
//! since the last [`reset_peak`], so a test can show that a call allocated no more than some
//! bound (an image decode refused from its header must not allocate its pixels).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    // Const-initialised and without a destructor: usable inside the allocator.
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn add(n: usize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get().saturating_add(n);
        l.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

fn sub(n: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(n)));
}

// SAFETY: every call forwards to `System` unchanged; only counters are updated besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            add(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            add(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        sub(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            sub(layout.size());
            add(new_size);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Starts a new measurement on this thread.
pub fn reset_peak() {
    let live = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(live));
}

/// The most bytes this thread held at once since [`reset_peak`], above what it held then.
pub fn peak_since(start_live: usize) -> usize {
    PEAK.with(Cell::get).saturating_sub(start_live)
}

pub fn live() -> usize {
    LIVE.with(Cell::get)
}

/// The peak extra bytes `f` allocated on this thread, and its result.
pub fn measure<R>(f: impl FnOnce() -> R) -> (usize, R) {
    reset_peak();
    let start = live();
    let r = f();
    (peak_since(start), r)
}
