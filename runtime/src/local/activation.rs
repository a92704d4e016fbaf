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
//! affected. Memory is never ahead of or behind storage: whenever a turn's
//! writes are rolled back after its method ran, the instance goes too; and
//! when the method never ran (its arguments did not decode), the turn's
//! writes are the constructor's, if it ran, and are committed with it.
//! Dropping an instance runs the user's `Drop`, whose panic is caught. (An alarm's turn is in `alarms.rs`; queueing a message and
//! doing what the schedule then says is in `drive.rs`.)
//!
//! Eviction: an activation idle for the runtime's `idle_timeout` is
//! *closed* (its instance dropped, its database closed; see `hosted.rs`)
//! while it stays in its type's table, so that a call arriving meanwhile
//! waits in its mailbox and runs after the close, on the same activation.
//! An activation closed with nothing waiting is *evicted*: removed from the
//! table, its storage handle retired.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};

use super::instance::{
    DispatchError, Dispatched, Instance, MethodInfo, TypeInfo, catch_panic, discard, panic_message,
};
use super::mailbox::{Call, Message, ReplySender};
use super::schedule::Schedule;
use crate::error::{Error, Result};
use crate::host::{Host, IN_TURN};
use crate::id::ObjectId;
use crate::observe::{Outcome, TurnWatch};
use crate::storage::Storage;
use crate::sync::lock;
use tracing::Instrument;

/// One object in memory.
pub(crate) struct Activation {
    pub(crate) id: ObjectId,
    /// The object's type.
    pub(super) info: Arc<TypeInfo>,
    storage: Storage,
    schedule: Mutex<Schedule<Message, Instance>>,
}

/// How a call's turn passes the output gate.
pub(super) enum Ending {
    /// Commit the turn's writes, then reply with this.
    Commit(Result<Vec<u8>>),
    /// Roll the turn's writes back, then fail the call with this.
    RollBack(Error),
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

    /// Drops an instance (the user's `Drop` runs; its panic is caught).
    pub(super) fn discard(&self, instance: &mut Option<Instance>) {
        if let Some(object) = instance.take() {
            discard(object, self.info.name, &self.id);
        }
    }

    /// One turn, owning what it needs, so that it can start in a caller's
    /// poll and end in a task. Returns the instance (or none, if the turn
    /// dropped it).
    pub(crate) async fn turn(
        self: Arc<Self>,
        instance: Option<Instance>,
        message: Message,
    ) -> Option<Instance> {
        let storage = self.storage.clone();
        let turn = async move {
            let mut instance = instance;
            self.reset_if_sync_failed(&mut instance);
            // A due checkpoint, or a close, runs on a sync thread meanwhile.
            self.storage.upkeep().await;
            match message {
                Message::Call(call) => {
                    let watch = self.info.observe.turn(&self.id, Some(call.method));
                    let span = watch.span().clone();
                    self.call(&mut instance, call, watch).instrument(span).await
                }
                Message::Alarm(due) => {
                    let watch = self.info.observe.turn(&self.id, None);
                    let span = watch.span().clone();
                    self.alarm_turn(&mut instance, due, watch).instrument(span).await
                }
                Message::Visit(visit) => self.visit(&mut instance, visit).await,
            }
            instance
        };
        IN_TURN.scope((), storage.in_turn(turn)).await
    }

    /// One turn: a call of a remote method, then the output gate: the turn's
    /// writes are committed before the reply is released, or rolled back if
    /// the turn failed.
    async fn call(&self, instance: &mut Option<Instance>, call: Call, watch: TurnWatch) {
        let Call { method, fingerprint, args, reply } = call;
        self.begin_turn(instance);
        let ending = self.run_method(instance, method, fingerprint, &args).await;
        self.end_turn(instance, ending, reply, watch);
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
        if self.storage.needs_upkeep() {
            // A reset, a checkpoint or a close comes first, in the turn
            // with a future.
            return Err(call);
        }
        let Some(object) = instance.as_mut() else { return Err(call) };
        if !info.is_some_and(|info| !info.is_async && info.fingerprint == call.fingerprint) {
            return Err(call);
        }
        let Call { method, args, reply, .. } = call;
        let watch = self.info.observe.turn(&self.id, Some(method));
        let _entered = watch.span().clone().entered();
        self.storage.begin_turn();
        let storage = &self.storage;
        let dispatched = std::panic::catch_unwind(AssertUnwindSafe(|| {
            IN_TURN.sync_scope((), || storage.in_turn_sync(|| object.dispatch_sync(method, &args)))
        }));
        let ending = match dispatched {
            Ok(Some(dispatched)) => self.dispatched(instance, method, Ok(dispatched)),
            // `is_async` said otherwise: generated code and table disagree.
            Ok(None) => Ending::RollBack(Error::Incompatible(format!(
                "`{}` method {method} has no synchronous dispatch although its table entry says it is a \
                 plain fn; rebuild the crate that defines the type",
                self.info.name
            ))),
            Err(payload) => self.dispatched(instance, method, Err(panic_message(payload.as_ref()))),
        };
        self.end_turn(instance, ending, reply, watch);
        Ok(())
    }

    /// Starts a turn's transaction; first, if a sync of the object's
    /// database failed since its last turn, resets the object.
    pub(super) fn begin_turn(&self, instance: &mut Option<Instance>) {
        self.reset_if_sync_failed(instance);
        self.storage.begin_turn();
    }

    /// If a sync of the object's database failed since its last turn, drops
    /// the instance and closes the database, so that the next turn starts
    /// from what is on disk. Turns with a future do this before they wait
    /// for the close (`Storage::upkeep`); `begin_turn` again, in case a sync
    /// failed since.
    fn reset_if_sync_failed(&self, instance: &mut Option<Instance>) {
        if let Some(reason) = self.storage.take_sync_failure() {
            tracing::warn!(
                r#type = self.info.name, object = %self.id, reason,
                "a sync of the object's database failed: the object is reset"
            );
            self.discard(instance);
            self.storage.start_close();
        }
    }

    /// The output gate: commits the turn's writes and releases the reply
    /// once they are durable, or rolls them back if the turn failed.
    pub(super) fn end_turn(
        &self,
        instance: &mut Option<Instance>,
        ending: Ending,
        reply: ReplySender,
        watch: TurnWatch,
    ) {
        let outcome = match ending {
            Ending::Commit(outcome) => match self.commit_turn(&watch) {
                Ok(()) => outcome,
                Err(err) => {
                    // Memory may now be ahead of storage: start again from storage.
                    self.discard(instance);
                    outcome.and(Err(err))
                }
            },
            Ending::RollBack(err) => {
                self.storage.rollback_turn();
                Err(err)
            }
        };
        watch.end(&self.info.observe, Outcome::of(&outcome));
        // Every reply waits for the commits before it to be durable, even
        // one that wrote nothing: it may have read them (see `storage/flush.rs`).
        // The caller may have stopped waiting; the turn counts all the same.
        self.storage.release(move |synced| {
            let _ = reply.send(outcome.and_then(|value| synced.map(|()| value)));
        });
    }

    /// Commits the turn's writes, watched (the `stead.commit` span and
    /// `stead_commit_seconds`).
    pub(super) fn commit_turn(&self, watch: &TurnWatch) -> Result<()> {
        let commit = watch.commit(&self.info.observe, || self.storage.turn_written());
        let committed = self.storage.commit_turn();
        commit.end(&self.info.observe);
        committed
    }

    async fn run_method(
        &self,
        instance: &mut Option<Instance>,
        method: u32,
        fingerprint: u64,
        args: &[u8],
    ) -> Ending {
        if let Err(err) = self.method_info(method, fingerprint) {
            return Ending::RollBack(err);
        }
        let object = match self.instance(instance).await {
            Ok(object) => object,
            Err(err) => return Ending::RollBack(err),
        };
        let dispatched = catch_panic(object.dispatch(method, args)).await;
        self.dispatched(instance, method, dispatched)
    }

    /// What a method's dispatch (or its panic) means for the caller, the
    /// turn's writes and the instance.
    fn dispatched(
        &self,
        instance: &mut Option<Instance>,
        method: u32,
        dispatched: std::result::Result<Dispatched, String>,
    ) -> Ending {
        match dispatched {
            Ok(Ok(bytes)) => Ending::Commit(Ok(bytes)),
            // The method never ran, so the turn's writes (if any) are those
            // of the constructor that ran for it, and the instance reflects
            // them: committing keeps storage in step with memory, where a
            // rollback would leave the instance ahead of its storage.
            Ok(Err(DispatchError::Arguments(err))) => Ending::Commit(Err(err)),
            Ok(Err(DispatchError::Result(err))) => {
                // The method ran but its result is lost: its writes are rolled
                // back, so its in-memory state must go too.
                self.discard(instance);
                Ending::RollBack(err)
            }
            Err(panic) => {
                self.discard(instance);
                let name = self.info.methods.get(method as usize).map_or("?", |info| info.name);
                Ending::RollBack(Error::Panicked(format!(
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
        // A replicated object is checked out of its log first: refused if
        // this node no longer owns it, rebuilt if the local copy is stale.
        self.storage.open_now()?;
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
