//! Activations: an object in memory, its mailbox, and the turns it runs.
//!
//! An *activation* exists for an object from the first call that reaches it
//! until it is evicted. Its scheduling state (mailbox, the right to run
//! turns, the instance between turns) is a [`Schedule`]; whoever holds the
//! right runs the turns (see `drive.rs`: usually the caller's own task, else
//! a drain task), so an object runs one turn at a time, to completion, in
//! mailbox order. No task is kept per object.
//!
//! A turn is: construct the instance if there is none (the constructor runs
//! lazily, in the turn of the first call, exactly once per activation), run
//! the method, then pass the output gate: commit the turn's writes, then
//! release the reply. A panic in the constructor or the method drops the
//! instance, rolls the writes back and answers the caller with `Panicked`;
//! the next call constructs a fresh instance. Other objects are never
//! affected. (An alarm's turn is in `alarms.rs`; queueing a message and
//! doing what the schedule then says is in `drive.rs`.)
//!
//! Eviction: an activation idle for the runtime's `idle_timeout` is
//! *evicted* (removed from its type's table, its instance dropped). A call
//! that raced with the eviction finds the schedule evicted and makes a new
//! activation.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};

use super::instance::{
    DispatchError, Dispatched, Instance, MethodInfo, TypeInfo, catch_panic, panic_message,
};
use super::mailbox::{Call, Message, ReplySender};
use super::schedule::Schedule;
use crate::error::{Error, Result};
use crate::host::{Host, IN_TURN};
use crate::id::ObjectId;
use crate::storage::Storage;
use crate::sync::lock;

/// One object in memory.
pub(crate) struct Activation {
    pub(crate) id: ObjectId,
    /// The object's type.
    pub(super) info: Arc<TypeInfo>,
    storage: Storage,
    schedule: Mutex<Schedule<Message, Instance>>,
}

impl Activation {
    pub(super) fn new(id: ObjectId, info: Arc<TypeInfo>) -> Self {
        let host = &info.host;
        let storage = Storage::new(host.storage().clone(), info.name, id, info.has_alarm);
        let schedule = Mutex::new(Schedule::new(host.lifecycle().sweep()));
        Activation { id, info, storage, schedule }
    }

    pub(crate) fn host(&self) -> &Host {
        &self.info.host
    }

    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The scheduling state, locked; its methods are the only transitions.
    pub(super) fn schedule(&self) -> MutexGuard<'_, Schedule<Message, Instance>> {
        lock(&self.schedule)
    }

    /// Evicts the activation if nobody runs it, nothing waits, and it has
    /// been idle since before sweep `idle_before`; returns its instance for
    /// the caller to drop outside every lock.
    pub(super) fn evict_if_idle(&self, idle_before: u64) -> Option<Option<Instance>> {
        self.schedule().evict_if_idle(idle_before)
    }

    /// One turn, owning what it needs, so that it can start in a caller's
    /// poll and end in a task. Returns the instance (or none, if the turn
    /// dropped it).
    pub(crate) async fn turn(
        self: Arc<Self>,
        instance: Option<Instance>,
        message: Message,
    ) -> Option<Instance> {
        IN_TURN
            .scope((), async move {
                let mut instance = instance;
                match message {
                    Message::Call(call) => self.call(&mut instance, call).await,
                    Message::Alarm(due) => self.alarm_turn(&mut instance, due).await,
                }
                instance
            })
            .await
    }

    /// One turn: a call of a remote method, then the output gate: the turn's
    /// writes are committed before the reply is released, or rolled back if
    /// the turn failed.
    async fn call(&self, instance: &mut Option<Instance>, call: Call) {
        let Call { method, fingerprint, args, reply } = call;
        self.storage.begin_turn();
        let outcome = self.run_method(instance, method, fingerprint, &args).await;
        self.end_turn(instance, outcome, reply);
    }

    /// The same turn without a future, when it can be had: the instance
    /// exists and the method is a plain `fn`. Otherwise the call is handed
    /// back, untouched.
    pub(crate) fn try_call_sync(
        &self,
        instance: &mut Option<Instance>,
        call: Call,
    ) -> std::result::Result<(), Call> {
        let info = self.info.methods.get(call.method as usize);
        let Some(object) = instance.as_mut() else { return Err(call) };
        if !info.is_some_and(|info| !info.is_async && info.fingerprint == call.fingerprint) {
            return Err(call);
        }
        let Call { method, args, reply, .. } = call;
        self.storage.begin_turn();
        let dispatched = std::panic::catch_unwind(AssertUnwindSafe(|| {
            IN_TURN.sync_scope((), || object.dispatch_sync(method, &args))
        }));
        let outcome = match dispatched {
            Ok(Some(dispatched)) => self.dispatched(instance, method, Ok(dispatched)),
            // `is_async` said otherwise: generated code and table disagree.
            Ok(None) => Err(Error::Incompatible(format!(
                "`{}` method {method} has no synchronous dispatch although its table entry says it is a \
                 plain fn; rebuild the crate that defines the type",
                self.info.name
            ))),
            Err(payload) => self.dispatched(instance, method, Err(panic_message(payload.as_ref()))),
        };
        self.end_turn(instance, outcome, reply);
        Ok(())
    }

    /// The output gate: commits the turn's writes and releases the reply, or
    /// rolls them back if the turn failed.
    fn end_turn(&self, instance: &mut Option<Instance>, mut outcome: Result<Vec<u8>>, reply: ReplySender) {
        if outcome.is_ok() {
            if let Err(err) = self.storage.commit_turn() {
                // Memory may now be ahead of storage: start again from storage.
                *instance = None;
                outcome = Err(err);
            }
        } else {
            self.storage.rollback_turn();
        }
        // The caller may have stopped waiting; the turn counts all the same.
        let _ = reply.send(outcome);
    }

    async fn run_method(
        &self,
        instance: &mut Option<Instance>,
        method: u32,
        fingerprint: u64,
        args: &[u8],
    ) -> Result<Vec<u8>> {
        self.method_info(method, fingerprint)?;
        let object = self.instance(instance).await?;
        let dispatched = catch_panic(object.dispatch(method, args)).await;
        self.dispatched(instance, method, dispatched)
    }

    /// What a method's dispatch (or its panic) means for the caller and the
    /// instance.
    fn dispatched(
        &self,
        instance: &mut Option<Instance>,
        method: u32,
        dispatched: std::result::Result<Dispatched, String>,
    ) -> Result<Vec<u8>> {
        match dispatched {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(DispatchError::Arguments(err))) => Err(err),
            Ok(Err(DispatchError::Result(err))) => {
                // The method ran but its result is lost: its writes are rolled
                // back, so its in-memory state must go too.
                *instance = None;
                Err(err)
            }
            Err(panic) => {
                *instance = None;
                let name = self.info.methods.get(method as usize).map_or("?", |info| info.name);
                Err(Error::Panicked(format!(
                    "`{}::{name}` panicked on object {}: {panic}; the instance was dropped and the \
                     next call constructs a fresh one",
                    self.info.name, self.id
                )))
            }
        }
    }

    fn method_info(&self, method: u32, fingerprint: u64) -> Result<&'static MethodInfo> {
        let methods: &'static [MethodInfo] = self.info.methods;
        let Some(info) = methods.get(method as usize) else {
            return Err(Error::Incompatible(format!(
                "`{}` has no method with id {method} on this node (it has {}); the caller was built \
                 from a different version of the type, deploy the same build everywhere",
                self.info.name,
                methods.len()
            )));
        };
        if info.fingerprint != fingerprint {
            return Err(Error::Incompatible(format!(
                "the caller's signature of `{}::{}` differs from this node's (fingerprint \
                 {fingerprint:016x}, expected {:016x}); caller and host were built from different \
                 versions of the type, deploy the same build everywhere",
                self.info.name, info.name, info.fingerprint
            )));
        }
        Ok(info)
    }

    /// The instance, constructed first if there is none.
    pub(super) async fn instance<'a>(&self, instance: &'a mut Option<Instance>) -> Result<&'a mut Instance> {
        if instance.is_none() {
            *instance = Some(self.construct().await?);
        }
        instance.as_mut().ok_or_else(|| Error::Panicked("unreachable: no instance".into()))
    }

    async fn construct(&self) -> Result<Instance> {
        if let Some(name) = self.host().names().get(&self.id)
            && let Err(err) = self.storage.record_name(&name)
        {
            tracing::warn!(object = %self.id, %err, "could not store the object's name");
        }
        match catch_panic((self.info.construct)(self.id, self.storage.clone())).await {
            Ok(Ok(object)) => Ok(object),
            Ok(Err(message)) => Err(Error::ConstructorFailed(format!(
                "the constructor of `{}` failed for object {}: {message}; the next call runs it again",
                self.info.name, self.id
            ))),
            Err(panic) => Err(Error::Panicked(format!(
                "the constructor of `{}` panicked for object {}: {panic}; the next call runs it again",
                self.info.name, self.id
            ))),
        }
    }
}
