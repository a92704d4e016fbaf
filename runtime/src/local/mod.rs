//! One process's objects: the hosted types and their activations, the
//! mailbox, who runs turns, the watchdog, eviction and the alarm scheduler.
//!
//! | file | what |
//! | --- | --- |
//! | `hosted.rs` | a hosted type: its method table, constructor, and table of activations |
//! | `activation.rs` | one object in memory: its turns and the output gate |
//! | `schedule.rs` | the scheduling state machine: who runs an object's turns |
//! | `drive.rs` | carrying it out: turns in the caller's poll, drain tasks |
//! | `mailbox.rs` | the bounded queue of messages, and the messages |
//! | `watchdog.rs` | runs calls whose callers never poll |
//! | `instance.rs` | a type-erased instance, its method table, panics caught |
//! | `alarms.rs` | the alarm turn, retries, and the scheduler task |
//! | `eviction.rs` | idle objects leave memory |
//!
//! This layer takes a [`Host`] from above and uses storage below; it knows
//! nothing of the cluster or of the user-facing `Runtime`.

mod activation;
mod alarms;
mod drive;
mod eviction;
mod hosted;
mod instance;
mod mailbox;
mod schedule;
pub(crate) mod watchdog;

use std::collections::HashMap;
use std::sync::Arc;

pub use alarms::MAX_ALARM_RETRIES;
pub(crate) use alarms::run_scheduler;
pub(crate) use drive::LocalReply;
pub(crate) use eviction::evict_idle_objects;
pub(crate) use hosted::{Constructor, HostedType};
pub use instance::{AlarmInfo, BoxFuture, DispatchError, Dispatched, MethodInfo};
pub(crate) use instance::{ErasedObject, Instance};
pub(crate) use mailbox::{Call, Message, ReplySender};
pub(crate) use schedule::Driver;

use crate::host::Host;

/// The objects of one process: every hosted type with its activations.
pub(crate) struct Objects {
    host: Host,
    types: HashMap<&'static str, Arc<HostedType>>,
}

impl Objects {
    pub(crate) fn new(host: Host, types: HashMap<&'static str, Arc<HostedType>>) -> Self {
        Objects { host, types }
    }

    pub(crate) fn host(&self) -> &Host {
        &self.host
    }

    /// The hosted type named `type_name`, if this process hosts it.
    pub(crate) fn hosted(&self, type_name: &str) -> Option<&Arc<HostedType>> {
        self.types.get(type_name)
    }

    /// The names of the hosted types.
    pub(crate) fn type_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.types.keys().copied()
    }

    /// Evicts every activation idle since before sweep `idle_before`.
    pub(crate) fn evict_idle(&self, idle_before: u64) {
        for hosted in self.types.values() {
            hosted.evict_idle(idle_before);
        }
    }

    /// Number of activations in memory, over all hosted types.
    pub(crate) fn active_count(&self) -> usize {
        self.types.values().map(|hosted| hosted.active_count()).sum()
    }
}
