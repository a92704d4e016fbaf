//! Activations: an object in memory, its mailbox, and the turns it runs.
//!
//! An *activation* exists for an object from the first call that reaches it
//! until it is evicted. It owns the object's mailbox and, once the
//! constructor has run, the instance. No task is parked per object: when a
//! message arrives at an idle activation, one task is spawned to drain its
//! mailbox, running one *turn* per message, and it ends when the mailbox is
//! empty. Because at most one such task exists per activation, an object runs
//! one turn at a time, to completion, in mailbox order.
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
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::alarm::{AlarmDue, MAX_ALARM_RETRIES, backoff, now_millis};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::id::{IdKeys, ObjectId};
use crate::mailbox::{Call, Full, Mailbox, Message};
use crate::object::{
    AlarmInfo, BoxFuture, DispatchError, DurableObject, Instance, MethodInfo, construct_erased,
};
use crate::runtime::{Runtime, WeakRuntime};
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
type Shard = HashMap<ObjectId, Arc<Activation>>;

impl HostedType {
    pub(crate) fn new<T: DurableObject>(secret: &[u8; 32]) -> Self {
        HostedType {
            name: T::NAME,
            keys: IdKeys::derive(secret, T::NAME),
            methods: T::METHODS,
            has_alarm: T::HAS_ALARM,
            construct: construct_erased::<T>,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, id: &ObjectId) -> MutexGuard<'_, Shard> {
        // Ids are uniformly distributed (random or hashed), so any byte will do.
        lock(&self.shards[id.as_bytes()[0] as usize % SHARDS])
    }

    /// Delivers `message` to object `id`, activating it if needed.
    /// On failure the message is handed back with the error, so that the
    /// caller can answer its reply channel.
    pub(crate) fn send(
        self: &Arc<Self>,
        runtime: &Runtime,
        id: ObjectId,
        message: Message,
    ) -> std::result::Result<(), (Error, Message)> {
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
            match activation.push(message) {
                Ok(()) => return Ok(()),
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

    /// Retires every activation idle since `idle_since` or earlier and drops
    /// their instances.
    pub(crate) fn evict_idle(&self, idle_since: Instant) {
        let mut evicted = Vec::new();
        for shard in self.shards.iter() {
            lock(shard).retain(|_, activation| match activation.retire_if_idle(idle_since) {
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
    id: ObjectId,
    host: Arc<HostedType>,
    runtime: Runtime,
    storage: Storage,
    state: Mutex<State>,
}

struct State {
    mailbox: Mailbox,
    /// A task is draining the mailbox (and holds the instance).
    running: bool,
    /// The draining task is parked waiting for the next message.
    parked: Option<Waker>,
    /// The parker has been told to let the draining task end.
    exit: bool,
    /// The activation is in the parker's list.
    registered: bool,
    /// Evicted: no longer in the table, takes no messages.
    retired: bool,
    instance: Option<Instance>,
    last_active: Instant,
}

impl Activation {
    fn new(id: ObjectId, host: Arc<HostedType>, runtime: Runtime) -> Self {
        let storage = Storage::new(runtime.storage_root(), host.name, id, host.has_alarm);
        Activation {
            id,
            host,
            runtime,
            storage,
            state: Mutex::new(State {
                mailbox: Mailbox::new(),
                running: false,
                parked: None,
                exit: false,
                registered: false,
                retired: false,
                instance: None,
                last_active: Instant::now(),
            }),
        }
    }

    /// Queues `message` and starts a drain task if none runs.
    fn push(self: &Arc<Self>, message: Message) -> std::result::Result<(), Refused> {
        let (start, wake) = {
            let mut state = lock(&self.state);
            if state.retired {
                return Err(Refused::Retired(message));
            }
            let capacity = self.runtime.config().mailbox_capacity;
            if let Err(Full(message)) = state.mailbox.push(message, capacity) {
                return Err(Refused::Full(message));
            }
            (!std::mem::replace(&mut state.running, true), state.parked.take())
        };
        if let Some(waker) = wake {
            waker.wake();
        } else if start {
            self.runtime.lifecycle().turns_started();
            let activation = self.clone();
            self.runtime.spawn(IN_TURN.scope((), activation.drain()));
        }
        Ok(())
    }

    /// Runs one turn per queued message. When the mailbox is empty the task
    /// parks for a moment (a caller that just got its reply often calls
    /// again at once, and waking a parked task is cheaper than spawning
    /// one); the parker ends it soon after, handing the instance back.
    async fn drain(self: Arc<Self>) {
        let mut instance = lock(&self.state).instance.take();
        loop {
            let next = std::future::poll_fn(|cx| {
                let mut state = lock(&self.state);
                if let Some(message) = state.mailbox.pop() {
                    state.parked = None;
                    return Poll::Ready(Some(message));
                }
                if std::mem::take(&mut state.exit) || self.runtime.is_closing() {
                    state.parked = None;
                    state.instance = instance.take();
                    state.running = false;
                    state.last_active = Instant::now();
                    return Poll::Ready(None);
                }
                state.parked = Some(cx.waker().clone());
                if !std::mem::replace(&mut state.registered, true) {
                    drop(state);
                    self.runtime.parker().register(Arc::downgrade(&self));
                }
                Poll::Pending
            })
            .await;
            let Some(message) = next else {
                self.runtime.lifecycle().turns_ended();
                return;
            };
            match message {
                Message::Call(call) => self.call(&mut instance, call).await,
                Message::Alarm(due) => self.alarm(&mut instance, due).await,
            }
        }
    }

    /// One turn: a call of a remote method, then the output gate: the turn's
    /// writes are committed before the reply is released, or rolled back if
    /// the turn failed.
    async fn call(&self, instance: &mut Option<Instance>, call: Call) {
        let Call { method, fingerprint, args, reply } = call;
        self.storage.begin_turn();
        let mut outcome = self.run_method(instance, method, fingerprint, &args).await;
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
        let info = self.method_info(method, fingerprint)?;
        let object = self.instance(instance).await?;
        match catch_panic(object.dispatch(method, args)).await {
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
                Err(Error::Panicked(format!(
                    "`{}::{}` panicked on object {}: {panic}; the instance was dropped and the \
                     next call constructs a fresh one",
                    self.host.name, info.name, self.id
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

    /// Retires the activation if it has been idle since `idle_since`,
    /// returning its instance for the caller to drop.
    fn retire_if_idle(&self, idle_since: Instant) -> Option<Option<Instance>> {
        let mut state = lock(&self.state);
        if state.running || !state.mailbox.is_empty() || state.last_active > idle_since {
            return None;
        }
        state.retired = true;
        Some(state.instance.take())
    }
}

/// Ends draining tasks that stay parked: each parked activation is told to
/// exit at the second tick after it parked (10 to 20 ms), so idle objects
/// hold no task, and eviction and shutdown are never kept waiting.
#[derive(Default)]
pub(crate) struct Parker {
    /// Parked before the last tick (released at the next), and since.
    lists: Mutex<(ParkedList, ParkedList)>,
    changed: Arc<tokio::sync::Notify>,
}

/// Activations whose draining task parked.
type ParkedList = Vec<Weak<Activation>>;

/// How often the parker looks at parked tasks.
const PARK_TICK: Duration = Duration::from_millis(10);

impl Parker {
    fn register(&self, activation: Weak<Activation>) {
        let was_empty = {
            let mut lists = lock(&self.lists);
            lists.1.push(activation);
            lists.0.is_empty() && lists.1.len() == 1
        };
        if was_empty {
            self.changed.notify_one();
        }
    }

    /// Tells every activation of `list` to let its draining task end.
    fn release(list: ParkedList) {
        for activation in list.iter().filter_map(Weak::upgrade) {
            let waker = {
                let mut state = lock(&activation.state);
                state.registered = false;
                state.exit = true;
                state.parked.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Releases every parked task at once (shutdown).
    pub(crate) fn release_all(&self) {
        let (old, new) = std::mem::take(&mut *lock(&self.lists));
        Parker::release(old);
        Parker::release(new);
        self.changed.notify_one();
    }

    /// The parker's task: ticks while anything is parked, sleeps otherwise.
    pub(crate) async fn run(runtime: WeakRuntime) {
        loop {
            let Some(rt) = runtime.upgrade() else { return };
            if rt.is_closed() {
                return;
            }
            let parker = rt.parker();
            let (due, idle) = {
                let lists = &mut *lock(&parker.lists);
                let newer = std::mem::take(&mut lists.1);
                (std::mem::replace(&mut lists.0, newer), lists.0.is_empty())
            };
            Parker::release(due);
            if idle {
                let changed = parker.changed.clone();
                drop(rt);
                changed.notified().await;
            } else {
                drop(rt);
                tokio::time::sleep(PARK_TICK).await;
            }
        }
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
