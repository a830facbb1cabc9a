//! Small synchronisation helpers.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, going on through a poisoned lock. Every lock in this crate guards state
/// that each critical section leaves consistent (single inserts and removes), so a
/// panic elsewhere while it was held cannot have left it half-updated.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
