//! A cap on the number of open databases.
//!
//! Every open object database holds two file descriptors (the database and
//! its WAL) and some cache. A node that touches a
//! million objects must not hold a million open files, so the runtime keeps
//! at most `max_open_databases` open and closes the one opened longest ago
//! (that is not in the middle of a turn) to make room. A closed database is
//! reopened on its object's next storage access, which only costs time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::observe::PressureEvictions;
use crate::sync::lock;

/// An object's database, as the pool sees it.
pub(crate) trait Closable: Send + Sync + 'static {
    /// The object's type, for the pressure evictions' metric.
    fn type_name(&self) -> &'static str;

    /// Closes the database unless a turn is using it.
    fn try_close_idle(&self) -> CloseAttempt;
}

/// The databases a runtime has open, and the cap on their number.
pub(crate) struct OpenDatabases {
    limit: usize,
    count: AtomicUsize,
    /// Databases in the order they were opened; entries may be stale (closed
    /// or dropped since), which is checked when they come up.
    queue: Mutex<VecDeque<Weak<dyn Closable>>>,
    /// Counts and warns about databases closed to make room.
    pressure: PressureEvictions,
}

impl OpenDatabases {
    pub(crate) fn new(limit: usize, pressure: PressureEvictions) -> Self {
        OpenDatabases { limit, count: AtomicUsize::new(0), queue: Mutex::new(VecDeque::new()), pressure }
    }

    /// Records that `storage` opened its database, closing others if the cap
    /// is exceeded. The caller holds `storage`'s lock; others are only tried.
    pub(crate) fn opened(&self, storage: Arc<dyn Closable>) {
        let count = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        let mut queue = lock(&self.queue);
        queue.push_back(Arc::downgrade(&storage));
        let mut excess = count.saturating_sub(self.limit);
        // Each entry is looked at once at most; busy ones go to the back.
        let mut budget = queue.len();
        while excess > 0 && budget > 0 {
            budget -= 1;
            let Some(entry) = queue.pop_front() else { break };
            let Some(other) = entry.upgrade() else { continue };
            if Arc::ptr_eq(&other, &storage) {
                queue.push_back(entry);
                continue;
            }
            match other.try_close_idle() {
                CloseAttempt::Closed => {
                    excess -= 1;
                    self.pressure.evicted(other.type_name(), count, self.limit);
                }
                CloseAttempt::NotOpen => {}
                CloseAttempt::Busy => queue.push_back(entry),
            }
        }
    }

    /// Records that a database was closed.
    pub(crate) fn closed(&self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }

    /// How many databases are open.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// What happened when the pool asked a database to close.
pub(crate) enum CloseAttempt {
    Closed,
    NotOpen,
    Busy,
}
