//! The one way the core takes a lock.

use std::sync::{Mutex, MutexGuard};

/// [`Mutex::lock`] that recovers the data when a thread panicked while holding it: a panic in
/// user code is isolated to its request, and the state behind these locks (counters, rings,
/// routing tables) is consistent between statements, so serving goes on.
pub(crate) trait Locked<T: ?Sized> {
    /// The guard, poisoned or not.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
