//! Who runs an object's turns: the caller, in its own task, or a drain task.
//!
//! When a call reaches an object that nobody is running turns for, the
//! caller's reply future ([`LocalReply`]) runs the turn itself the first time
//! it is polled: no task is spawned or woken, so a call to an idle object
//! costs about what the method costs. The right to run turns is a
//! [`Drainer`], held by one party at a time together with the instance:
//! that is what keeps an object at one turn at a time.
//!
//! A caller's poll runs the turns queued before its own, its own, and at most
//! [`INLINE_TURNS`] in all; then it gives the right back (mailbox empty) or
//! hands it to a spawned *drain task*, which runs the rest. Both spend
//! tokio's cooperative budget: a drain task a unit per turn, a caller's
//! poll its whole budget for a reply it ran ([`INLINE_REPLY_BUDGET`]). So a
//! task that calls idle objects in a loop yields its worker at its next
//! call, and a drain task whose mailbox never empties every 128 turns, as
//! they would on any tokio resource. A turn that has
//! to wait (an `async` method awaiting something) is moved to a drain task
//! at that point, so that it finishes even if the caller stops polling: a
//! turn, once started, always runs to completion.
//!
//! A call whose future is dropped unpolled gets a drain task at the drop.
//! A future that is kept but never polled would leave its call (and the ones
//! behind it) waiting: any other caller of the object that polls runs them,
//! and otherwise the watchdog (`watchdog.rs`) spawns a drain task within
//! two of its ticks (10 to 20 ms). Messages nobody waits for (alarms, calls relayed by
//! the cluster route) get a drain task at once (`Driver::Task`).
//!
//! Every step here is a transition of the activation's [`Schedule`](super::schedule::Schedule),
//! which says what to do next; this file carries it out.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context as TaskContext, Poll};

use tokio::sync::oneshot;

use super::activation::Activation;
use super::instance::Instance;
use super::mailbox::Message;
use super::schedule::{Claim, Driver, Left, Pushed, Refused};
use super::watchdog::Watched;
use crate::error::{Error, Result};

impl Activation {
    /// Queues `message`, then does what the schedule says: nothing, tell the
    /// watchdog (the caller's poll will run the turn), or spawn a drain task.
    pub(super) fn push(self: &Arc<Self>, message: Message, driver: Driver) -> Result<(), Refused<Message>> {
        let config = self.host().config();
        let bound = message.bound(config.mailbox_capacity, config.limits.mailbox_bytes);
        let size = message.size();
        let pushed = self.schedule().push(message, size, bound, driver)?;
        match pushed {
            Pushed::Queued => {}
            Pushed::Watch => {
                let watched: Weak<dyn Watched> = Arc::downgrade(self) as Weak<Activation>;
                self.host().watchdog().watch(watched);
            }
            Pushed::Spawn(claim) => Drainer::new(self.clone(), claim).spawn(),
        }
        Ok(())
    }

    /// Makes sure waiting messages get a drain task, unless someone runs
    /// the turns already.
    pub(crate) fn kick(self: &Arc<Self>) {
        let claim = self.schedule().claim();
        if let Some(claim) = claim {
            Drainer::new(self.clone(), claim).spawn();
        }
    }
}

impl Watched for Activation {
    fn rescue(self: Arc<Self>) {
        let claim = self.schedule().rescue();
        if let Some(claim) = claim {
            Drainer::new(self, claim).spawn();
        }
    }
}

/// The most turns one poll of a caller's reply runs before handing the
/// rest to a drain task (its own turn included).
pub(crate) const INLINE_TURNS: usize = 64;

/// What a reply whose turns ran in the caller's own poll costs of tokio's
/// cooperative budget (128 units a poll): all of it, so that the caller
/// yields its worker at its next call, and the tasks queued behind it run.
///
/// Tokio's own resources charge one unit an operation, of a microsecond or
/// less; a turn takes 5–20 µs (a commit included). At one unit a reply, a
/// caller kept its worker for up to 128 calls, 1–3 ms, and with 64 callers
/// always ready on 2 workers the one that had just yielded waited for all
/// the others' turns: 0.8 % of calls took 30–280 ms (measured with
/// `Normal` on 1,000 objects, in memory as on disk, where p99 stayed at
/// 0.06 ms and the longest call took 240 ms). Spending the whole budget, the
/// longest call there took 8–10 ms and p99 rose to 1.7–3.0 ms, at the same
/// throughput within the runs' spread; on 100 objects, where these waits
/// added to those for checkpoints, p99 fell from 19–23 ms to 1.7–2.3 ms. A task
/// that makes one call between its awaits is not slowed: its next await
/// would have yielded anyway.
const INLINE_REPLY_BUDGET: usize = 128;

/// Takes the task's budget for a reply about to run in its poll: `Pending`
/// (the task yields, and runs the turn when polled again) if none is left.
/// The units beyond the first are spent at once (they are not given back
/// if the reply does not come in this poll: the turns ran all the same);
/// the first is spent by the caller once the reply is there.
fn take_reply_budget(cx: &mut TaskContext<'_>) -> Poll<tokio::task::coop::RestoreOnPending> {
    let reply = std::task::ready!(tokio::task::coop::poll_proceed(cx));
    for _ in 1..INLINE_REPLY_BUDGET {
        if !tokio::task::coop::has_budget_remaining() {
            break;
        }
        if let Poll::Ready(unit) = tokio::task::coop::poll_proceed(cx) {
            unit.made_progress();
        }
    }
    Poll::Ready(reply)
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
    /// The holder of a right just claimed (a drain task, unless it is made
    /// by [`claim`](Self::claim) for a caller's poll).
    pub(crate) fn new(activation: Arc<Activation>, claim: Claim<Instance>) -> Self {
        activation.host().lifecycle().turns_started();
        Drainer { activation, instance: claim.instance, holding: true, inline: false }
    }

    /// Claims `activation` for the polling caller, if messages wait and
    /// nobody runs them.
    fn claim(activation: &Arc<Activation>) -> Option<Drainer> {
        let claim = activation.schedule().claim()?;
        let mut drainer = Drainer::new(activation.clone(), claim);
        drainer.inline = true;
        Some(drainer)
    }

    /// The next message; or none, having given the right and the instance
    /// back (in the same critical section that found the mailbox empty).
    fn next(&mut self) -> Option<Message> {
        if !self.holding {
            return None;
        }
        let now = self.activation.host().lifecycle().sweep();
        let message = self.activation.schedule().pop_or_release(&mut self.instance, now);
        if message.is_none() {
            self.released();
        }
        message
    }

    /// Records that the right was given back.
    fn released(&mut self) {
        self.holding = false;
        self.activation.host().lifecycle().turns_ended();
    }

    /// Hands the right to a new drain task.
    pub(crate) fn spawn(mut self) {
        self.inline = false;
        let host = self.activation.host().clone();
        host.spawn(self.drain());
    }

    /// Runs turns until the mailbox is empty (in a drain task).
    ///
    /// Each turn spends from tokio's cooperative budget, so that a drain
    /// task whose mailbox never empties (many callers keep it full) still
    /// yields its worker regularly: the tasks queued behind it, among them
    /// the callers waiting for their replies, get to run.
    async fn drain(mut self) {
        while let Some(message) = self.next() {
            if let Some(message) = self.try_sync(message) {
                let instance = self.instance.take();
                self.instance = self.activation.clone().turn(instance, message).await;
            }
            tokio::task::coop::consume_budget().await;
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
        let host = self.activation.host().clone();
        let _runtime = host.enter();
        for _ in 0..INLINE_TURNS {
            let Some(message) = self.next() else { return };
            if let Some(message) = self.try_sync(message) {
                let instance = self.instance.take();
                let mut turn = Box::pin(self.activation.clone().turn(instance, message));
                match turn.as_mut().poll(cx) {
                    Poll::Ready(instance) => self.instance = instance,
                    Poll::Pending => {
                        self.inline = false;
                        host.spawn(async move {
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
        // A caller's poll that stops with turns left hands them to a drain
        // task; a drain task dropped mid-turn (the tokio runtime is going
        // away) has no instance left to give back.
        let now = self.activation.host().lifecycle().sweep();
        let left = self.activation.schedule().leave(&mut self.instance, now, self.inline);
        match left {
            Left::Released => self.released(),
            Left::HandOff => {
                let drain = Drainer {
                    activation: self.activation.clone(),
                    instance: self.instance.take(),
                    holding: true,
                    inline: false,
                };
                // The right moves to the drain task, uncounted twice.
                self.holding = false;
                drain.spawn();
            }
        }
    }
}

/// The reply to a call queued for an object of this runtime. Polling it
/// runs the object's turns in the polling task when nobody else is (see the
/// module docs); dropping it unanswered never cancels the call.
pub(crate) struct LocalReply {
    receiver: oneshot::Receiver<Result<Vec<u8>>>,
    /// The object, while the reply has not come (and the caller drives it).
    activation: Option<Arc<Activation>>,
}

impl LocalReply {
    /// The reply of a call queued with `Driver::Caller` on `activation`.
    pub(crate) fn new(receiver: oneshot::Receiver<Result<Vec<u8>>>, activation: Arc<Activation>) -> Self {
        LocalReply { receiver, activation: Some(activation) }
    }
}

impl Future for LocalReply {
    type Output = Result<Vec<u8>>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(activation) = &this.activation
            && this.receiver.is_empty()
        {
            // Turns run right here spend the task's scheduling budget, all
            // of it (`INLINE_REPLY_BUDGET`), as tokio's own resources spend
            // theirs: a task that calls idle objects in a loop would
            // otherwise keep its worker, and the tasks queued behind it
            // (drain tasks holding other objects, their callers) would wait
            // for as long as it loops. Out of budget, the task yields and
            // runs the turn when it is polled again.
            let coop = std::task::ready!(take_reply_budget(cx));
            if let Some(drainer) = Drainer::claim(activation) {
                let receiver = &this.receiver;
                drainer.run_inline(cx, || !receiver.is_empty());
                if let Ok(reply) = this.receiver.try_recv() {
                    coop.made_progress();
                    this.activation = None;
                    return Poll::Ready(reply);
                }
            }
        }
        // Unconstrained: the budget was spent above, for the turns; out of
        // it, tokio's channel would not register the task to be woken by
        // the reply (only to be polled again soon, which would spin until
        // the reply came).
        match Pin::new(&mut tokio::task::unconstrained(&mut this.receiver)).poll(cx) {
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

impl Drop for LocalReply {
    fn drop(&mut self) {
        // Unanswered: the call still runs, in a drain task if need be.
        if let Some(activation) = self.activation.take()
            && self.receiver.is_empty()
        {
            activation.kick();
        }
    }
}
