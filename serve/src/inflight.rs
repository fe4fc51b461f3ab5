//! The completion requests being served, each with the flag that stops its rows: shutdown waits
//! for the set to empty, and stops what is left once its grace period is over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct InFlight {
    next: AtomicU64,
    flags: Mutex<HashMap<u64, Arc<AtomicBool>>>,
}

/// A request in the set until dropped; its flag stops its rows.
pub struct Entry {
    id: u64,
    pub cancel: Arc<AtomicBool>,
    shared: Arc<crate::state::Shared>,
}

impl InFlight {
    pub fn len(&self) -> usize {
        self.flags.lock().map_or(0, |f| f.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets every request's stop flag (the end of the grace period).
    pub fn cancel_all(&self) {
        if let Ok(flags) = self.flags.lock() {
            for f in flags.values() {
                f.store(true, Ordering::SeqCst);
            }
        }
    }
}

impl Entry {
    pub fn new(shared: &Arc<crate::state::Shared>) -> Entry {
        let set = &shared.in_flight;
        let id = set.next.fetch_add(1, Ordering::Relaxed);
        let cancel = Arc::new(AtomicBool::new(shared.closing.load(Ordering::SeqCst)));
        if let Ok(mut flags) = set.flags.lock() {
            flags.insert(id, cancel.clone());
        }
        Entry { id, cancel, shared: shared.clone() }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // Stops the rows of a request whose handler or stream went away, then leaves the set.
        self.cancel.store(true, Ordering::SeqCst);
        if let Ok(mut flags) = self.shared.in_flight.flags.lock() {
            flags.remove(&self.id);
        }
    }
}
