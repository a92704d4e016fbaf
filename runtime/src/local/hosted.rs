//! The hosted types: each with its table of activations.
//!
//! A type registered with `RuntimeBuilder::host` gets a [`HostedType`]: its
//! name, id keys, method table and constructor, and the table of its objects
//! in memory, split into independently locked shards. Delivering a message
//! to an object finds its activation, or makes one (checking the id's MAC
//! first), and queues the message there.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use super::activation::Activation;
use super::drive::Drainer;
use super::instance::{Constructor, MethodInfo, TypeInfo};
use super::mailbox::Message;
use super::schedule::{Closed, Driver, Refused};
use crate::error::Error;
use crate::host::Host;
use crate::id::{IdKeys, ObjectId};
use crate::sync::lock;

/// Number of independently locked parts of each activation table.
const SHARDS: usize = 64;

/// A durable object type registered with `RuntimeBuilder::host`, and the
/// table of its activations.
pub(crate) struct HostedType {
    info: Arc<TypeInfo>,
    /// The keys that mint and check this type's ids.
    pub(crate) keys: IdKeys,
    shards: Box<[Mutex<Shard>]>,
}

/// One independently locked part of an activation table.
type Shard = HashMap<ObjectId, Arc<Activation>, BuildHasherDefault<IdHasher>>;

/// Hashes an object id by taking 8 bytes of its identity, with no mixing:
/// identities are uniformly distributed (random, or a keyed hash of the
/// name), and only ids whose MAC checks out are inserted, so nobody can
/// choose keys that collide.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        match bytes.get(8..16).and_then(|eight| <[u8; 8]>::try_from(eight).ok()) {
            Some(eight) => self.0 = u64::from_le_bytes(eight),
            // Not an id's bytes (the array's length prefix): mix it in.
            None => bytes.iter().for_each(|&b| self.0 = self.0.rotate_left(8) ^ u64::from(b)),
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl HostedType {
    pub(crate) fn new(
        host: Host,
        name: &'static str,
        keys: IdKeys,
        methods: &'static [MethodInfo],
        has_alarm: bool,
        construct: Constructor,
    ) -> Self {
        HostedType {
            info: Arc::new(TypeInfo { name, methods, has_alarm, construct, host }),
            keys,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::default())).collect(),
        }
    }

    fn shard(&self, id: &ObjectId) -> MutexGuard<'_, Shard> {
        // Ids are uniformly distributed (random or hashed), so any byte will do.
        lock(&self.shards[id.as_bytes()[0] as usize % SHARDS])
    }

    /// Delivers `message` to object `id`, activating it if needed, and
    /// returns the activation (to build a `LocalReply` with, when `driver`
    /// is [`Driver::Caller`]). On failure the message is handed back with
    /// the error, so that the caller can answer its reply channel.
    pub(crate) fn send(
        self: &Arc<Self>,
        id: ObjectId,
        message: Message,
        driver: Driver,
    ) -> std::result::Result<Arc<Activation>, (Error, Message)> {
        let lifecycle = self.info.host.lifecycle();
        // Counted before `closed` is read: shutdown, having closed, waits
        // for every delivery that read it open.
        let _sending = lifecycle.sending();
        if lifecycle.is_closed() {
            let err = Error::Unavailable("the runtime has been shut down; it takes no more calls".into());
            return Err((err, message));
        }
        // While the runtime drains for shutdown, nobody may be left to poll.
        let driver = if lifecycle.is_closing() { Driver::Task } else { driver };
        let mut message = message;
        loop {
            let activation = {
                let mut shard = self.shard(&id);
                match shard.get(&id) {
                    Some(activation) => activation.clone(),
                    None => {
                        if let Err(err) = self.keys.verify(&id) {
                            return Err((err, message));
                        }
                        let activation = Arc::new(Activation::new(id, self.info.clone()));
                        shard.insert(id, activation.clone());
                        activation
                    }
                }
            };
            match activation.push(message, driver) {
                Ok(()) => return Ok(activation),
                Err(Refused::Evicted(returned)) => message = returned,
                Err(Refused::Full(returned)) => {
                    let config = self.info.host.config();
                    let err = Error::Overloaded(format!(
                        "the mailbox of `{}` object {id} is full (at most {} calls or {} bytes of \
                         arguments wait); the call was not delivered, retry later or raise \
                         `RuntimeBuilder::mailbox_capacity` or `Limits::mailbox_bytes`",
                        self.info.name, config.mailbox_capacity, config.limits.mailbox_bytes
                    ));
                    return Err((err, returned));
                }
            }
        }
    }

    /// Evicts every activation idle since before sweep `idle_before` (see
    /// `Lifecycle::sweep`): drops its instance, closes its database, and
    /// removes it from the table.
    ///
    /// An activation stays in the table while it closes, so that a call
    /// that comes meanwhile is queued there instead of making a second
    /// activation: a second one would open the database before the first
    /// closed it (in memory it would start empty, a file would be locked, or
    /// removed under it after `delete_all`). The queued calls run once the
    /// close is done, on a fresh instance. Dropping and closing block (the
    /// user's `Drop` may be slow): the sweep runs off the async workers.
    pub(crate) fn evict_idle(&self, idle_before: u64) {
        let mut closing = Vec::new();
        for shard in self.shards.iter() {
            for activation in lock(shard).values() {
                if let Some(instance) = activation.schedule().evict_if_idle(idle_before) {
                    closing.push((activation.clone(), instance));
                }
            }
        }
        // Outside the table's locks: an instance's Drop is user code.
        for (activation, mut instance) in closing {
            activation.discard(&mut instance);
            activation.storage().close();
            let closed = {
                let mut shard = self.shard(&activation.id);
                let closed = activation.schedule().closed();
                if let Closed::Evicted = closed {
                    shard.remove(&activation.id);
                    activation.storage().retire();
                }
                closed
            };
            if let Closed::Reopened(claim) = closed {
                Drainer::new(activation, claim).spawn();
            }
        }
    }

    /// The objects in memory.
    pub(crate) fn activations(&self) -> Vec<Arc<Activation>> {
        self.shards.iter().flat_map(|shard| lock(shard).values().cloned().collect::<Vec<_>>()).collect()
    }

    /// Number of activations in memory.
    pub(crate) fn active_count(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }
}
