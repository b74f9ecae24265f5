//! [`Live`]: a value that a reload replaces while readers keep using it without a lock.
//!
//! A reader takes a snapshot ([`Live::get`], an `Arc` clone) and works on it to the end:
//! a request that started before a reload finishes on the version it started with. A
//! reload builds the whole new value first and swaps it in one step ([`Live::set`]), so
//! no reader ever sees half of one version and half of another.
//!
//! A leaf: imports no other module of the gateway.

use arc_swap::ArcSwap;
use std::fmt;
use std::sync::Arc;

/// A shared, atomically replaceable value. Cheap to clone (clones share the cell).
pub struct Live<T>(Arc<ArcSwap<T>>);

impl<T> Live<T> {
    pub fn new(value: T) -> Self {
        Live(Arc::new(ArcSwap::from_pointee(value)))
    }

    /// The current version, kept alive for as long as the caller holds it.
    pub fn get(&self) -> Arc<T> {
        self.0.load_full()
    }

    /// Replaces the value for every later [`Live::get`]; snapshots already taken stay.
    pub fn set(&self, value: T) {
        self.0.store(Arc::new(value));
    }
}

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Live(self.0.clone())
    }
}

impl<T: fmt::Debug> fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Live").field(&*self.get()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_outlives_the_swap() {
        let live = Live::new(1);
        let other = live.clone();
        let before = live.get();
        other.set(2);
        assert_eq!(*before, 1);
        assert_eq!(*live.get(), 2);
    }
}
