//! Who runs an object's turns: the caller, in its own task, or a drain task.
//!
//! When a call reaches an object that nobody is running turns for, the
//! caller's reply future ([`Outcome`]) runs the turn itself the first time
//! it is polled: no task is spawned or woken, so a call to an idle object
//! costs about what the method costs. The right to run turns is a
//! [`Drainer`], held by one party at a time together with the instance:
//! that is what keeps an object at one turn at a time.
//!
//! A caller's poll runs the turns queued before its own, its own, and at most
//! [`INLINE_TURNS`] in all; then it gives the right back (mailbox empty) or
//! hands it to a spawned *drain task*, which runs the rest. A turn that has
//! to wait (an `async` method awaiting something) is moved to a drain task
//! at that point, so that it finishes even if the caller stops polling: a
//! turn, once started, always runs to completion.
//!
//! A call whose future is dropped unpolled gets a drain task at the drop.
//! A future that is kept but never polled would leave its call (and the ones
//! behind it) waiting: any other caller of the object that polls runs them,
//! and otherwise the [`Watchdog`] spawns a drain task within two of its
//! ticks (10 to 20 ms). Messages nobody waits for (alarms, calls relayed by
//! the cluster route) get a drain task at once ([`Driver::Task`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::activation::{Activation, State};
use crate::error::{Error, Result};
use crate::mailbox::Message;
use crate::object::Instance;
use crate::runtime::WeakRuntime;
use crate::sync::lock;

/// The most turns one poll of a caller's reply runs before handing the
/// rest to a drain task (its own turn included).
pub(crate) const INLINE_TURNS: usize = 64;

/// Who runs a message's turn if nobody runs the object's turns yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Driver {
    /// The sender awaits an [`Outcome`], whose poll runs the turn.
    Caller,
    /// A drain task, spawned at once.
    Task,
}

/// The right to run an activation's turns, with its instance. One exists
/// per activation at most.
pub(crate) struct Drainer {
    activation: Arc<Activation>,
    instance: Option<Instance>,
    /// Still holds the right (it is given back when the mailbox is empty).
    holding: bool,
    /// Held by a caller's poll: if it is dropped while turns wait, a drain
    /// task takes over. (A drain task that is dropped is being shut down.)
    inline: bool,
}

impl Drainer {
    /// Claims `activation` if messages wait and nobody runs them.
    pub(crate) fn claim(activation: &Arc<Activation>) -> Option<Drainer> {
        let instance = {
            let mut state = lock(&activation.state);
            if state.draining || state.mailbox.is_empty() {
                return None;
            }
            state.draining = true;
            state.instance.take()
        };
        activation.runtime.lifecycle().turns_started();
        Some(Drainer { activation: activation.clone(), instance, holding: true, inline: true })
    }

    /// The next message; or none, having given the right and the instance
    /// back in the same critical section (so that a message pushed meanwhile
    /// always finds someone to run it).
    fn next(&mut self) -> Option<Message> {
        if !self.holding {
            return None;
        }
        let mut state = lock(&self.activation.state);
        if let Some(message) = state.mailbox.pop() {
            return Some(message);
        }
        give_back(&self.activation, self.instance.take(), state);
        self.holding = false;
        None
    }

    /// Hands the right to a new drain task.
    pub(crate) fn spawn(mut self) {
        self.inline = false;
        let runtime = self.activation.runtime.clone();
        runtime.spawn(self.drain());
    }

    /// Runs turns until the mailbox is empty (in a drain task).
    async fn drain(mut self) {
        while let Some(message) = self.next() {
            if let Some(message) = self.try_sync(message) {
                let instance = self.instance.take();
                self.instance = self.activation.clone().turn(instance, message).await;
            }
        }
    }

    /// Runs the turn of `message` without a future if it can (a call of a
    /// plain `fn` on a constructed instance); hands the message back if not.
    fn try_sync(&mut self, message: Message) -> Option<Message> {
        match message {
            Message::Call(call) => {
                self.activation.try_call_sync(&mut self.instance, call).err().map(Message::Call)
            }
            alarm => Some(alarm),
        }
    }

    /// Runs turns in the caller's task, until `done` (the caller's reply is
    /// there) or [`INLINE_TURNS`] turns. A turn that has to wait, and any
    /// turns left, go to a drain task.
    fn run_inline(mut self, cx: &mut TaskContext<'_>, done: impl Fn() -> bool) {
        // User code may spawn tasks or start timers: those belong to the
        // object's runtime, whichever executor polls the caller.
        let _runtime = self.activation.runtime.enter();
        for _ in 0..INLINE_TURNS {
            let Some(message) = self.next() else { return };
            if let Some(message) = self.try_sync(message) {
                let instance = self.instance.take();
                let mut turn = Box::pin(self.activation.clone().turn(instance, message));
                match turn.as_mut().poll(cx) {
                    Poll::Ready(instance) => self.instance = instance,
                    Poll::Pending => {
                        self.inline = false;
                        let runtime = self.activation.runtime.clone();
                        runtime.spawn(async move {
                            self.instance = turn.await;
                            self.drain().await;
                        });
                        return;
                    }
                }
            }
            if done() {
                break;
            }
        }
        // Dropping `self` gives the right back, or hands it to a drain task
        // if turns are left.
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        if !self.holding {
            return;
        }
        // Checked and given back under one lock: a message pushed in between
        // would see the right still held and count on its holder.
        let state = lock(&self.activation.state);
        if self.inline && !state.mailbox.is_empty() {
            drop(state);
            let drainer = Drainer {
                activation: self.activation.clone(),
                instance: self.instance.take(),
                holding: true,
                inline: false,
            };
            self.holding = false;
            drainer.spawn();
            return;
        }
        // A drain task dropped mid-turn (the tokio runtime is going away)
        // has no instance left to give.
        give_back(&self.activation, self.instance.take(), state);
        self.holding = false;
    }
}

/// Gives the right to run turns and the instance back to `activation`, in
/// the critical section (`state`) in which its holder found nothing to run.
fn give_back(activation: &Activation, instance: Option<Instance>, mut state: MutexGuard<'_, State>) {
    state.draining = false;
    state.instance = instance;
    state.last_active = activation.runtime.sweep();
    drop(state);
    activation.runtime.lifecycle().turns_ended();
}

/// The reply to a call queued for an object of this runtime. Polling it
/// runs the object's turns in the polling task when nobody else is (see the
/// module docs); dropping it unanswered never cancels the call.
pub(crate) struct Outcome {
    receiver: oneshot::Receiver<Result<Vec<u8>>>,
    /// The object, while the reply has not come (and the caller drives it).
    activation: Option<Arc<Activation>>,
}

impl Outcome {
    /// The reply of a call queued with [`Driver::Caller`] on `activation`.
    pub(crate) fn driven(receiver: oneshot::Receiver<Result<Vec<u8>>>, activation: Arc<Activation>) -> Self {
        Outcome { receiver, activation: Some(activation) }
    }
}

impl Future for Outcome {
    type Output = Result<Vec<u8>>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(activation) = &this.activation
            && this.receiver.is_empty()
            && let Some(drainer) = Drainer::claim(activation)
        {
            let receiver = &this.receiver;
            drainer.run_inline(cx, || !receiver.is_empty());
            // A turn run right here is a function call: take its reply
            // without spending the task's scheduling budget (waiting for a
            // reply from another task, below, does spend it).
            if let Ok(reply) = this.receiver.try_recv() {
                this.activation = None;
                return Poll::Ready(reply);
            }
        }
        match Pin::new(&mut this.receiver).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(reply) => {
                this.activation = None;
                Poll::Ready(reply.unwrap_or_else(|_| {
                    Err(Error::Disconnected(
                        "the object was dropped before it replied (the runtime was shut down)".into(),
                    ))
                }))
            }
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        // Unanswered: the call still runs, in a drain task if need be.
        if let Some(activation) = self.activation.take()
            && self.receiver.is_empty()
        {
            activation.kick();
        }
    }
}

/// Spawns drain tasks for calls whose callers do not poll: each activation
/// it is told about gets one at the second tick after (10 to 20 ms), unless
/// its turns ran meanwhile.
#[derive(Default)]
pub(crate) struct Watchdog {
    /// Watched before the last tick (looked at by the next), and since.
    lists: Mutex<(Watched, Watched)>,
    changed: Arc<tokio::sync::Notify>,
}

/// Activations with messages that wait for their callers.
type Watched = Vec<Weak<Activation>>;

/// How often the watchdog looks.
const TICK: Duration = Duration::from_millis(10);

impl Watchdog {
    /// Watches `activation` (whose `watched` flag the caller just set).
    pub(crate) fn watch(&self, activation: Weak<Activation>) {
        let was_empty = {
            let mut lists = lock(&self.lists);
            lists.1.push(activation);
            lists.0.is_empty() && lists.1.len() == 1
        };
        if was_empty {
            self.changed.notify_one();
        }
    }

    /// Whether some activation is watched.
    pub(crate) fn is_watching(&self) -> bool {
        let lists = lock(&self.lists);
        !lists.0.is_empty() || !lists.1.is_empty()
    }

    /// Gives every activation of `list` whose messages still wait a drain task.
    fn kick(list: Watched) {
        for activation in list.iter().filter_map(Weak::upgrade) {
            lock(&activation.state).watched = false;
            activation.kick();
        }
    }

    /// Kicks every watched activation at once (shutdown).
    pub(crate) fn kick_all(&self) {
        let (old, new) = std::mem::take(&mut *lock(&self.lists));
        Watchdog::kick(old);
        Watchdog::kick(new);
        self.changed.notify_one();
    }

    /// The watchdog's task: ticks while anything is watched, sleeps otherwise.
    pub(crate) async fn run(runtime: WeakRuntime) {
        loop {
            let Some(rt) = runtime.upgrade() else { return };
            if rt.is_closed() {
                return;
            }
            let watchdog = rt.watchdog();
            let (due, idle) = {
                let lists = &mut *lock(&watchdog.lists);
                let newer = std::mem::take(&mut lists.1);
                (std::mem::replace(&mut lists.0, newer), lists.0.is_empty())
            };
            Watchdog::kick(due);
            if idle {
                let changed = watchdog.changed.clone();
                drop(rt);
                changed.notified().await;
            } else {
                drop(rt);
                tokio::time::sleep(TICK).await;
            }
        }
    }
}
