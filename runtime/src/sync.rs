//! Locking as the runtime does it.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning: no code of ours panics while holding
/// these locks, and user code never runs under them.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
