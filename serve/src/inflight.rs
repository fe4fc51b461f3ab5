//! The completion requests being served, each with the flag that stops its rows: shutdown waits
//! for the set to empty, and stops what is left once its grace period is over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type Flags = Arc<Mutex<HashMap<u64, Arc<AtomicBool>>>>;

#[derive(Default)]
pub struct InFlight {
    next: AtomicU64,
    flags: Flags,
}

/// A request in the set until dropped; its flag stops its rows.
pub struct Entry {
    id: u64,
    pub cancel: Arc<AtomicBool>,
    flags: Flags,
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

    /// Adds a request; `stopped` when the server is already stopping what runs.
    pub fn enter(&self, stopped: bool) -> Entry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cancel = Arc::new(AtomicBool::new(stopped));
        if let Ok(mut flags) = self.flags.lock() {
            flags.insert(id, cancel.clone());
        }
        Entry { id, cancel, flags: self.flags.clone() }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // Stops the rows of a request whose handler or stream went away, then leaves the set.
        self.cancel.store(true, Ordering::SeqCst);
        if let Ok(mut flags) = self.flags.lock() {
            flags.remove(&self.id);
        }
    }
}
