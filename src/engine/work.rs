//! A count of the engine's elementary steps (a stamp compared or looked up, a value measured, a
//! field written), so tests and fuzz targets check that work stays linear in the input by
//! counting, never by timing. One thread-local add per step.

use std::cell::Cell;

thread_local! {
    static STEPS: Cell<u64> = const { Cell::new(0) };
}

/// Counts `n` steps.
pub(crate) fn step(n: usize) {
    STEPS.with(|s| s.set(s.get().wrapping_add(n as u64)));
}

/// Steps the engine took on this thread so far (compare two readings).
pub fn steps() -> u64 {
    STEPS.with(Cell::get)
}
