//! This process's objects: every hosted type, with its activations.

use std::collections::HashMap;
use std::sync::Arc;

use super::hosted::HostedType;
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
