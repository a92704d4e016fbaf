//! Activations: an object in memory, its mailbox, and the turns it runs.
//!
//! An *activation* exists for an object from the first call that reaches it
//! until it is evicted. It owns the object's mailbox and, between turns, the
//! instance. Whoever runs its turns holds the instance meanwhile: at most one
//! party at a time (see `drive.rs`: usually the caller's own task, else a
//! drain task), so an object runs one turn at a time, to completion, in
//! mailbox order. No task is kept per object.
//!
//! A turn is: construct the instance if there is none (the constructor runs
//! lazily, in the turn of the first call, exactly once per activation), run
//! the method, then release the reply. A panic in the constructor or the
//! method drops the instance and answers the caller with `Panicked`; the next
//! call constructs a fresh instance. Other objects are never affected.
//!
//! Eviction: an activation idle for the runtime's `idle_timeout` is *retired*
//! (removed from the table, its instance dropped). A call that raced with the
//! retirement finds the activation retired and simply creates a new one.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use crate::alarm::{AlarmDue, MAX_ALARM_RETRIES, backoff, now_millis};
use crate::context::Context;
use crate::drive::{Drainer, Driver};
use crate::error::{Error, Result};
use crate::id::{IdKeys, ObjectId};
use crate::mailbox::{Call, Full, Mailbox, Message, Reply};
use crate::object::{
    AlarmInfo, BoxFuture, DispatchError, Dispatched, DurableObject, Instance, MethodInfo, construct_erased,
};
use crate::runtime::Runtime;
use crate::storage::Storage;
use crate::sync::lock;

/// Number of independently locked parts of each activation table.
const SHARDS: usize = 64;

tokio::task_local! {
    /// Set while a turn runs, so that calls made by objects are still
    /// accepted while the runtime drains for shutdown.
    static IN_TURN: ();
}

/// Whether the current task is running a turn.
pub(crate) fn in_turn() -> bool {
    IN_TURN.try_with(|_| ()).is_ok()
}

/// A durable object type registered with `RuntimeBuilder::host`, and the
/// table of its activations.
pub(crate) struct HostedType {
    pub(crate) name: &'static str,
    pub(crate) keys: IdKeys,
    pub(crate) methods: &'static [MethodInfo],
    pub(crate) has_alarm: bool,
    construct: fn(Context) -> BoxFuture<'static, std::result::Result<Instance, String>>,
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
    pub(crate) fn new<T: DurableObject>(secret: &[u8; 32]) -> Self {
        HostedType {
            name: T::NAME,
            keys: IdKeys::derive(secret, T::NAME),
            methods: T::METHODS,
            has_alarm: T::HAS_ALARM,
            construct: construct_erased::<T>,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::default())).collect(),
        }
    }

    fn shard(&self, id: &ObjectId) -> MutexGuard<'_, Shard> {
        // Ids are uniformly distributed (random or hashed), so any byte will do.
        lock(&self.shards[id.as_bytes()[0] as usize % SHARDS])
    }

    /// Delivers `message` to object `id`, activating it if needed, and
    /// returns the activation (to build an [`Outcome`] with, when `driver`
    /// is [`Driver::Caller`]). On failure the message is handed back with
    /// the error, so that the caller can answer its reply channel.
    pub(crate) fn send(
        self: &Arc<Self>,
        runtime: &Runtime,
        id: ObjectId,
        message: Message,
        driver: Driver,
    ) -> std::result::Result<Arc<Activation>, (Error, Message)> {
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
                        let activation = Arc::new(Activation::new(id, self.clone(), runtime.clone()));
                        shard.insert(id, activation.clone());
                        activation
                    }
                }
            };
            match activation.push(message, driver) {
                Ok(()) => return Ok(activation),
                Err(Refused::Retired(returned)) => message = returned,
                Err(Refused::Full(returned)) => {
                    let err = Error::Overloaded(format!(
                        "the mailbox of `{}` object {id} is full ({} calls waiting); the call was \
                         not delivered, retry later or raise `RuntimeBuilder::mailbox_capacity`",
                        self.name,
                        runtime.config().mailbox_capacity
                    ));
                    return Err((err, returned));
                }
            }
        }
    }

    /// Retires every activation last active before sweep `idle_before`
    /// (see `Runtime::sweep`) and drops their instances.
    pub(crate) fn evict_idle(&self, idle_before: u64) {
        let mut evicted = Vec::new();
        for shard in self.shards.iter() {
            lock(shard).retain(|_, activation| match activation.retire_if_idle(idle_before) {
                Some(instance) => {
                    evicted.push((instance, activation.storage.clone()));
                    false
                }
                None => true,
            });
        }
        // Outside the table's locks: an instance's Drop is user code.
        for (instance, storage) in evicted {
            drop(instance);
            storage.close();
        }
    }

    /// Number of activations in memory.
    pub(crate) fn active_count(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }
}

/// Why an activation did not take a message.
enum Refused {
    /// The mailbox is full; the message is handed back.
    Full(Message),
    /// The activation was evicted meanwhile; the message is handed back.
    Retired(Message),
}

/// One object in memory.
pub(crate) struct Activation {
    pub(crate) id: ObjectId,
    host: Arc<HostedType>,
    pub(crate) runtime: Runtime,
    storage: Storage,
    pub(crate) state: Mutex<State>,
}

pub(crate) struct State {
    pub(crate) mailbox: Mailbox,
    /// Someone holds the instance and runs the turns: a caller's poll or a
    /// drain task (see `drive.rs`).
    pub(crate) draining: bool,
    /// Messages wait for a caller to poll, and the watchdog knows.
    pub(crate) watched: bool,
    /// Evicted: no longer in the table, takes no messages.
    retired: bool,
    pub(crate) instance: Option<Instance>,
    /// The eviction sweep during which the last turn ended (a coarse clock
    /// that costs no system call per turn).
    pub(crate) last_active: u64,
}

impl Activation {
    fn new(id: ObjectId, host: Arc<HostedType>, runtime: Runtime) -> Self {
        let storage = Storage::new(runtime.storage_root(), host.name, id, host.has_alarm);
        let last_active = runtime.sweep();
        Activation {
            id,
            host,
            runtime,
            storage,
            state: Mutex::new(State {
                mailbox: Mailbox::new(),
                draining: false,
                watched: false,
                retired: false,
                instance: None,
                last_active,
            }),
        }
    }

    /// Queues `message`. If no one runs the object's turns, `driver` says
    /// who will: the caller, by polling its reply, or a task spawned now.
    fn push(self: &Arc<Self>, message: Message, driver: Driver) -> std::result::Result<(), Refused> {
        let (spawn, watch) = {
            let mut state = lock(&self.state);
            if state.retired {
                return Err(Refused::Retired(message));
            }
            let capacity = self.runtime.config().mailbox_capacity;
            if let Err(Full(message)) = state.mailbox.push(message, capacity) {
                return Err(Refused::Full(message));
            }
            if state.draining {
                (false, false)
            } else if driver == Driver::Task || self.runtime.is_closing() {
                (true, false)
            } else {
                (false, !std::mem::replace(&mut state.watched, true))
            }
        };
        if spawn {
            self.kick();
        } else if watch {
            self.runtime.watchdog().watch(Arc::downgrade(self));
        }
        Ok(())
    }

    /// Makes sure waiting messages get a drain task, unless someone runs
    /// the turns already.
    pub(crate) fn kick(self: &Arc<Self>) {
        if let Some(drainer) = Drainer::claim(self) {
            drainer.spawn();
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
        IN_TURN
            .scope((), async move {
                let mut instance = instance;
                match message {
                    Message::Call(call) => self.call(&mut instance, call).await,
                    Message::Alarm(due) => self.alarm(&mut instance, due).await,
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
        let info = self.host.methods.get(call.method as usize);
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
                self.host.name
            ))),
            Err(payload) => self.dispatched(instance, method, Err(panic_message(payload.as_ref()))),
        };
        self.end_turn(instance, outcome, reply);
        Ok(())
    }

    /// The output gate: commits the turn's writes and releases the reply, or
    /// rolls them back if the turn failed.
    fn end_turn(&self, instance: &mut Option<Instance>, mut outcome: Result<Vec<u8>>, reply: Reply) {
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
                let name = self.host.methods.get(method as usize).map_or("?", |info| info.name);
                Err(Error::Panicked(format!(
                    "`{}::{name}` panicked on object {}: {panic}; the instance was dropped and the \
                     next call constructs a fresh one",
                    self.host.name, self.id
                )))
            }
        }
    }

    /// One turn: an alarm index entry came due (see `alarm.rs`).
    async fn alarm(&self, instance: &mut Option<Instance>, due: AlarmDue) {
        let index = &self.runtime.storage_root().alarms;
        self.storage.begin_turn();
        let outcome = self.run_alarm(instance, due.retries).await;
        match outcome {
            Ok(()) => {
                if let Err(err) = self.storage.commit_turn() {
                    *instance = None;
                    self.retry_alarm(&due, &err.to_string());
                }
            }
            Err(err) => {
                self.storage.rollback_turn();
                self.retry_alarm(&due, &err.to_string());
            }
        }
        index.finish(&due);
        // Keep the index in step with storage: a later alarm gets its entry.
        if let Ok(Some(at)) = self.storage.alarm_millis()
            && at > due.at
        {
            let _ = index.schedule(self.host.name, &self.id, at, 0);
        }
    }

    /// Runs the handler if the object's own storage says the alarm is due.
    async fn run_alarm(&self, instance: &mut Option<Instance>, retries: u32) -> Result<()> {
        match self.storage.alarm_millis()? {
            Some(at) if at <= now_millis() => {}
            // Not set, or moved later (the entry was stale): nothing to run.
            _ => return Ok(()),
        }
        if !self.host.has_alarm {
            return self.storage.delete_alarm();
        }
        let object = self.instance(instance).await?;
        self.storage.delete_alarm()?;
        let info = AlarmInfo { retry_count: retries, is_retry: retries > 0 };
        match catch_panic(object.alarm(info)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => {
                *instance = None;
                Err(Error::Panicked(format!("the alarm handler returned an error: {message}")))
            }
            Err(panic) => {
                *instance = None;
                Err(Error::Panicked(format!("the alarm handler panicked: {panic}")))
            }
        }
    }

    /// Indexes the next try of a failed alarm, or gives up after the last.
    fn retry_alarm(&self, due: &AlarmDue, reason: &str) {
        let retry = due.retries + 1;
        if retry > MAX_ALARM_RETRIES {
            tracing::warn!(
                object = %self.id, r#type = self.host.name, reason,
                "the alarm failed {} times; it is dropped", MAX_ALARM_RETRIES + 1
            );
            self.storage.begin_turn();
            match self.storage.delete_alarm() {
                Ok(()) => {
                    let _ = self.storage.commit_turn();
                }
                Err(_) => self.storage.rollback_turn(),
            }
            return;
        }
        let delay = backoff(self.runtime.config().alarm_retry_delay, retry);
        let at = now_millis().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        tracing::info!(object = %self.id, r#type = self.host.name, reason, retry, "the alarm failed; retrying");
        if let Err(err) = self.runtime.storage_root().alarms.schedule(self.host.name, &self.id, at, retry) {
            tracing::warn!(%err, "could not index the alarm's retry");
        }
    }

    fn method_info(&self, method: u32, fingerprint: u64) -> Result<&'static MethodInfo> {
        let methods: &'static [MethodInfo] = self.host.methods;
        let Some(info) = methods.get(method as usize) else {
            return Err(Error::Incompatible(format!(
                "`{}` has no method with id {method} on this node (it has {}); the caller was built \
                 from a different version of the type, deploy the same build everywhere",
                self.host.name,
                methods.len()
            )));
        };
        if info.fingerprint != fingerprint {
            return Err(Error::Incompatible(format!(
                "the caller's signature of `{}::{}` differs from this node's (fingerprint \
                 {fingerprint:016x}, expected {:016x}); caller and host were built from different \
                 versions of the type, deploy the same build everywhere",
                self.host.name, info.name, info.fingerprint
            )));
        }
        Ok(info)
    }

    /// The instance, constructed first if there is none.
    async fn instance<'a>(&self, instance: &'a mut Option<Instance>) -> Result<&'a mut Instance> {
        if instance.is_none() {
            *instance = Some(self.construct().await?);
        }
        instance.as_mut().ok_or_else(|| Error::Panicked("unreachable: no instance".into()))
    }

    async fn construct(&self) -> Result<Instance> {
        let ctx = Context::new(self.id, self.host.name, self.runtime.clone(), self.storage.clone());
        match catch_panic((self.host.construct)(ctx)).await {
            Ok(Ok(object)) => Ok(object),
            Ok(Err(message)) => Err(Error::ConstructorFailed(format!(
                "the constructor of `{}` failed for object {}: {message}; the next call runs it again",
                self.host.name, self.id
            ))),
            Err(panic) => Err(Error::Panicked(format!(
                "the constructor of `{}` panicked for object {}: {panic}; the next call runs it again",
                self.host.name, self.id
            ))),
        }
    }

    /// Retires the activation if it has been idle since before sweep
    /// `idle_before`, returning its instance for the caller to drop.
    fn retire_if_idle(&self, idle_before: u64) -> Option<Option<Instance>> {
        let mut state = lock(&self.state);
        if state.draining || !state.mailbox.is_empty() || state.last_active >= idle_before {
            return None;
        }
        state.retired = true;
        Some(state.instance.take())
    }
}

/// Runs `future`, turning a panic into its message.
async fn catch_panic<T>(mut future: BoxFuture<'_, T>) -> std::result::Result<T, String> {
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    })
    .await
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_string()
    }
}
