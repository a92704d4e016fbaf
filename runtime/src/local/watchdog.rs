//! The watchdog: runs calls whose callers do not poll.
//!
//! A call to an idle object is run by its caller's poll (see `drive.rs`).
//! A caller that keeps its future but never polls it would leave the call,
//! and every call behind it, waiting. So the first such call of an object
//! registers the object here, and at the second tick after (10 to 20 ms)
//! the watchdog gives it a drain task, unless its turns ran meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::sync::lock;

/// How often the watchdog looks.
const TICK: Duration = Duration::from_millis(10);

/// Something whose queued messages may wait for a caller that never polls.
pub(crate) trait Watched: Send + Sync + 'static {
    /// Gives the waiting messages a drain task, unless someone runs them
    /// already; forgets that the watchdog was told.
    fn rescue(self: Arc<Self>);
}

/// Spawns drain tasks for calls whose callers do not poll.
#[derive(Default)]
pub(crate) struct Watchdog {
    lists: Mutex<Lists>,
    changed: Arc<Notify>,
    closed: AtomicBool,
}

/// The objects the watchdog was told about, by age.
#[derive(Default)]
struct Lists {
    /// Told before the last tick: rescued at the next one.
    due: Vec<Weak<dyn Watched>>,
    /// Told since the last tick: due at the next one.
    recent: Vec<Weak<dyn Watched>>,
}

impl Lists {
    fn is_empty(&self) -> bool {
        self.due.is_empty() && self.recent.is_empty()
    }
}

impl Watchdog {
    /// Watches `object` (whose schedule just asked for it).
    pub(crate) fn watch(&self, object: Weak<dyn Watched>) {
        let was_empty = {
            let mut lists = lock(&self.lists);
            let was_empty = lists.is_empty();
            lists.recent.push(object);
            was_empty
        };
        if was_empty {
            self.changed.notify_one();
        }
    }

    /// Whether some object is watched.
    pub(crate) fn is_watching(&self) -> bool {
        !lock(&self.lists).is_empty()
    }

    /// Rescues every watched object at once (shutdown).
    pub(crate) fn rescue_all(&self) {
        let Lists { due, recent } = std::mem::take(&mut *lock(&self.lists));
        rescue(due);
        rescue(recent);
        self.changed.notify_one();
    }

    /// Ends the watchdog's task.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// The watchdog's task: ticks while anything is watched, sleeps
    /// otherwise; ends when closed or dropped.
    pub(crate) async fn run(watchdog: Weak<Watchdog>) {
        loop {
            let Some(this) = watchdog.upgrade() else { return };
            if this.closed.load(Ordering::SeqCst) {
                return;
            }
            let (due, idle) = {
                let lists = &mut *lock(&this.lists);
                let recent = std::mem::take(&mut lists.recent);
                (std::mem::replace(&mut lists.due, recent), lists.due.is_empty())
            };
            rescue(due);
            if idle {
                let changed = this.changed.clone();
                drop(this);
                changed.notified().await;
            } else {
                drop(this);
                tokio::time::sleep(TICK).await;
            }
        }
    }
}

fn rescue(list: Vec<Weak<dyn Watched>>) {
    for object in list.iter().filter_map(Weak::upgrade) {
        object.rescue();
    }
}
