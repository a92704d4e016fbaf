//! Who runs an activation's turns: the scheduling state of one object.
//!
//! Four kinds of party touch it, each under the activation's lock:
//! - a *sender* pushes a message (a caller's stub, the cluster's serving
//!   side, the alarm scheduler);
//! - a *holder* of the right to run turns pops messages and runs them: the
//!   caller's reply future while it is polled, or a drain task;
//! - the *watchdog* rescues messages whose callers never poll;
//! - *eviction* closes an idle activation (drops its instance, closes its
//!   database) and then removes it from memory, unless messages came
//!   meanwhile.
//!
//! Every change of state is one method of [`Schedule`], and each returns
//! what its caller must do next, outside the lock: nothing, tell the
//! watchdog, spawn a drain task, run turns, drop an instance. `drive.rs`
//! and `hosted.rs` carry those out; the model tests at the end of this file
//! check the protocol under every interleaving of two callers, a drain task
//! and the watchdog, and of two callers and an eviction.

use super::mailbox::{Bound, Mailbox};

/// Who runs a message's turn if nobody runs the object's turns yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Driver {
    /// The sender awaits the reply, and polling it runs the turn.
    Caller,
    /// A drain task, spawned at once (nobody awaits the reply, or the
    /// runtime is draining for shutdown).
    Task,
}

/// The scheduling state of one activation: its mailbox, the right to run
/// its turns, its instance between turns, whether the watchdog was told,
/// and whether it is being closed or was evicted.
///
/// **Invariant** (whenever the lock is free): every queued message has
/// exactly one party that will run it, at most one turn runs at a time, and
/// no turn runs while the activation is closing. Concretely:
/// - at most one party holds the right to run turns (`running`); the holder
///   has the instance, pops until the mailbox is empty, and gives the right
///   back in the same critical section in which it found the mailbox empty;
/// - while `closing`, nobody holds the right and nobody may take it: the
///   closer (eviction) has the instance, and when it has dropped it and
///   closed the database it takes the right for a drain task if messages
///   came meanwhile, or else marks the schedule evicted;
/// - if nobody holds the right, the schedule is not closing, and messages
///   wait, each was pushed by a caller that will poll its reply, and
///   `watched` is set: the watchdog knows (or its sender is about to tell
///   it), in case no caller polls;
/// - an evicted schedule holds no message and takes none.
pub(crate) struct Schedule<M, I> {
    mailbox: Mailbox<M>,
    /// Someone holds the right to run turns (and the instance).
    running: bool,
    /// The instance, between turns (a holder has it during them).
    instance: Option<I>,
    /// The watchdog was told about waiting messages.
    watched: bool,
    /// Being closed by eviction: takes messages, runs none until closed.
    closing: bool,
    /// Evicted: no longer in its type's table, takes no messages.
    evicted: bool,
    /// The eviction sweep during which the right was last given back.
    last_active: u64,
}

/// What a sender must do after its message was queued.
#[must_use]
pub(crate) enum Pushed<I> {
    /// Nothing: the right's holder, or the sender's own poll, will run the
    /// message, and the watchdog already knows.
    Queued,
    /// The sender's poll will run the message; it must tell the watchdog,
    /// in case it never polls.
    Watch,
    /// The sender now holds the right: it must spawn a drain task.
    Spawn(Claim<I>),
}

/// Why a message was not queued; the message is handed back.
pub(crate) enum Refused<M> {
    /// The mailbox holds as many messages as its limit allows.
    Full(M),
    /// The activation was evicted: the sender must make a new one.
    Evicted(M),
}

/// The right to run turns, just taken, with the instance.
#[must_use]
pub(crate) struct Claim<I> {
    pub(crate) instance: Option<I>,
}

/// What the closer must do once the instance is dropped and the database
/// closed.
#[must_use]
pub(crate) enum Closed<I> {
    /// Nothing came meanwhile: the schedule is evicted, and the closer
    /// removes the activation from its table (in the same critical section
    /// of the table's lock, so that no sender finds it evicted there).
    Evicted,
    /// Messages came meanwhile: the closer holds the right and must spawn a
    /// drain task (whose first turn constructs a fresh instance).
    Reopened(Claim<I>),
}

/// What a holder of the right must do when it stops running turns.
#[must_use]
pub(crate) enum Left {
    /// The right was given back.
    Released,
    /// Messages wait: the holder keeps the right and must hand it, with the
    /// instance, to a drain task.
    HandOff,
}

impl<M, I> Schedule<M, I> {
    /// A new activation's schedule: empty, not running, no instance yet.
    pub(crate) fn new(now: u64) -> Self {
        Schedule {
            mailbox: Mailbox::new(),
            running: false,
            instance: None,
            watched: false,
            closing: false,
            evicted: false,
            last_active: now,
        }
    }

    /// A sender queues `message` of `size` bytes (refused when what waits
    /// reaches `bound`).
    pub(crate) fn push(
        &mut self,
        message: M,
        size: usize,
        bound: Option<Bound>,
        driver: Driver,
    ) -> Result<Pushed<I>, Refused<M>> {
        if self.evicted {
            return Err(Refused::Evicted(message));
        }
        self.mailbox.push(message, size, bound).map_err(Refused::Full)?;
        if self.running || self.closing {
            // The holder, or the closer when it is done, runs it.
            return Ok(Pushed::Queued);
        }
        Ok(match driver {
            Driver::Task => Pushed::Spawn(self.take_right()),
            Driver::Caller if self.watched => Pushed::Queued,
            Driver::Caller => {
                self.watched = true;
                Pushed::Watch
            }
        })
    }

    /// A caller's poll, or a dropped reply, takes the right if messages
    /// wait and nobody holds it.
    pub(crate) fn claim(&mut self) -> Option<Claim<I>> {
        if self.running || self.closing || self.mailbox.is_empty() {
            return None;
        }
        Some(self.take_right())
    }

    /// The watchdog's tick: forgets that it was told, and takes the right
    /// (for a drain task) if messages still wait and nobody holds it.
    pub(crate) fn rescue(&mut self) -> Option<Claim<I>> {
        self.watched = false;
        self.claim()
    }

    /// The holder's next message; or, when none waits, the right and the
    /// `instance` are given back in this same critical section, so that a
    /// message pushed just after finds the right free.
    pub(crate) fn pop_or_release(&mut self, instance: &mut Option<I>, now: u64) -> Option<M> {
        debug_assert!(self.running, "only the holder of the right pops");
        let message = self.mailbox.pop();
        if message.is_none() {
            self.release(instance, now);
        }
        message
    }

    /// The holder stops running turns. With `hand_off` (a caller's poll that
    /// ran its share), messages still waiting keep the right for a drain
    /// task; otherwise the right and the instance are given back.
    pub(crate) fn leave(&mut self, instance: &mut Option<I>, now: u64, hand_off: bool) -> Left {
        debug_assert!(self.running, "only the holder of the right leaves");
        if hand_off && !self.mailbox.is_empty() {
            return Left::HandOff;
        }
        self.release(instance, now);
        Left::Released
    }

    /// How many messages wait in the mailbox.
    pub(crate) fn queued(&self) -> usize {
        self.mailbox.len()
    }

    /// Eviction: an activation that nobody runs, with an empty mailbox, and
    /// idle since before sweep `idle_before` starts closing; returns its
    /// instance, for the caller to drop outside every lock before it closes
    /// the database and calls [`closed`](Self::closed).
    pub(crate) fn evict_if_idle(&mut self, idle_before: u64) -> Option<Option<I>> {
        if self.running
            || self.closing
            || self.evicted
            || !self.mailbox.is_empty()
            || self.last_active >= idle_before
        {
            return None;
        }
        self.closing = true;
        Some(self.instance.take())
    }

    /// The closer has dropped the instance and closed the database: the
    /// schedule is evicted, or, if messages came meanwhile, the closer takes
    /// the right to run them.
    pub(crate) fn closed(&mut self) -> Closed<I> {
        debug_assert!(self.closing, "only the closer ends a close");
        self.closing = false;
        if self.mailbox.is_empty() {
            self.evicted = true;
            Closed::Evicted
        } else {
            Closed::Reopened(self.take_right())
        }
    }

    fn take_right(&mut self) -> Claim<I> {
        self.running = true;
        Claim { instance: self.instance.take() }
    }

    fn release(&mut self, instance: &mut Option<I>, now: u64) {
        self.running = false;
        self.instance = instance.take();
        self.last_active = now;
    }
}

/// The protocol of `drive.rs` and the watchdog, model-checked with loom:
/// every interleaving of two callers, a drain task and a watchdog tick.
#[cfg(test)]
mod model {
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::sync::{Arc, Mutex};
    use loom::thread;

    use super::*;

    /// How many turns a caller's poll runs before handing off (in the
    /// runtime, 64; one here, so that the hand-off is explored).
    const INLINE_TURNS: usize = 1;

    /// What an instance is in the model: constructed once, by the first turn.
    const INSTANCE: u32 = 7;

    /// How a caller treats its reply future after queueing its call.
    #[derive(Clone, Copy)]
    enum Caller {
        /// Polls it (runs turns if it gets the right).
        Polls,
        /// Drops it unpolled (a drain task runs the call).
        Drops,
        /// Keeps it and never polls (only others, or the watchdog, run it).
        Keeps,
    }

    struct Model {
        /// The schedule, and the order in which messages were queued.
        state: Mutex<(Schedule<u32, u32>, Vec<u32>)>,
        /// The watchdog was told and has not ticked since.
        told: Mutex<bool>,
        /// Turns running right now.
        running: AtomicUsize,
        /// Messages in the order their turns ran.
        ran: Mutex<Vec<u32>>,
    }

    impl Model {
        fn new() -> Self {
            Model {
                state: Mutex::new((Schedule::new(0), Vec::new())),
                told: Mutex::new(false),
                running: AtomicUsize::new(0),
                ran: Mutex::new(Vec::new()),
            }
        }

        fn with<R>(&self, f: impl FnOnce(&mut Schedule<u32, u32>, &mut Vec<u32>) -> R) -> R {
            let mut state = self.state.lock().unwrap();
            let (schedule, queued) = &mut *state;
            f(schedule, queued)
        }

        /// Runs turns while holding the right, as `Drainer` does: at most
        /// `max` of them, then leaves (handing off when `inline`).
        fn hold(&self, claim: Claim<u32>, max: usize, inline: bool) {
            let mut instance = claim.instance;
            for _ in 0..max {
                let Some(message) = self.with(|s, _| s.pop_or_release(&mut instance, 1)) else { return };
                assert_eq!(self.running.fetch_add(1, Ordering::SeqCst), 0, "two turns ran at once");
                instance.get_or_insert(INSTANCE);
                self.ran.lock().unwrap().push(message);
                self.running.fetch_sub(1, Ordering::SeqCst);
            }
            match self.with(|s, _| s.leave(&mut instance, 1, inline)) {
                Left::Released => {}
                // The drain task the holder spawns.
                Left::HandOff => self.hold(Claim { instance }, usize::MAX, false),
            }
        }

        fn call(&self, message: u32, caller: Caller) {
            let pushed = self.with(|s, queued| {
                let pushed = s.push(message, 1, Some(Bound { messages: 8, bytes: 64 }), Driver::Caller);
                queued.push(message);
                pushed
            });
            match pushed {
                Ok(Pushed::Queued) => {}
                Ok(Pushed::Watch) => *self.told.lock().unwrap() = true,
                Ok(Pushed::Spawn(_)) | Err(_) => {
                    panic!("a caller's push never spawns and is not refused here")
                }
            }
            match caller {
                Caller::Polls => {
                    if let Some(claim) = self.with(|s, _| s.claim()) {
                        self.hold(claim, INLINE_TURNS, true);
                    }
                }
                Caller::Drops => {
                    if let Some(claim) = self.with(|s, _| s.claim()) {
                        self.hold(claim, usize::MAX, false);
                    }
                }
                Caller::Keeps => {}
            }
        }

        /// A message nobody awaits (an alarm): a drain task at once.
        fn send_to_task(&self, message: u32) {
            let pushed = self.with(|s, queued| {
                let pushed = s.push(message, 1, None, Driver::Task);
                queued.push(message);
                pushed
            });
            match pushed {
                Ok(Pushed::Queued) => {}
                Ok(Pushed::Spawn(claim)) => self.hold(claim, usize::MAX, false),
                Ok(Pushed::Watch) | Err(_) => panic!("a task's push never watches and is not refused"),
            }
        }

        fn watchdog_tick(&self) {
            let told = std::mem::take(&mut *self.told.lock().unwrap());
            if told && let Some(claim) = self.with(|s, _| s.rescue()) {
                self.hold(claim, usize::MAX, false);
            }
        }

        /// Once every party has stopped: nothing runs, and whatever still
        /// waits is known to the watchdog, whose next tick runs it. Then
        /// every message has run exactly once, in the order it was queued,
        /// and the instance was kept.
        fn check_quiescent(&self) {
            self.with(|s, _| {
                assert!(!s.running, "a party kept the right after stopping");
                if !s.mailbox.is_empty() {
                    assert!(s.watched, "messages wait and nobody will run them");
                    assert!(*self.told.lock().unwrap(), "the watchdog was never told about waiting messages");
                }
            });
            self.watchdog_tick();
            self.with(|s, queued| {
                assert!(s.mailbox.is_empty(), "a message was stranded");
                assert!(!s.running);
                assert_eq!(*self.ran.lock().unwrap(), *queued, "every message runs once, in queue order");
                assert_eq!(s.instance, Some(INSTANCE), "the instance was lost or made twice");
            });
        }
    }

    fn check(first: Caller, second: Caller) {
        // Two preemptions take seconds and catch every bug we planted
        // (releasing with messages waiting, never telling the watchdog,
        // rescuing while held); `LOOM_MAX_PREEMPTIONS=3` explores deeper in
        // about a minute.
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound.get_or_insert(2);
        builder.check(move || {
            let model = Arc::new(Model::new());
            let parties = [
                thread::spawn({
                    let model = model.clone();
                    move || model.call(1, first)
                }),
                thread::spawn({
                    let model = model.clone();
                    move || model.call(2, second)
                }),
                thread::spawn({
                    let model = model.clone();
                    move || model.send_to_task(3)
                }),
                thread::spawn({
                    let model = model.clone();
                    move || model.watchdog_tick()
                }),
            ];
            for party in parties {
                party.join().unwrap();
            }
            model.check_quiescent();
        });
    }

    #[test]
    fn two_polling_callers_a_drain_task_and_the_watchdog_strand_nothing() {
        check(Caller::Polls, Caller::Polls);
    }

    #[test]
    fn a_caller_that_never_polls_is_rescued() {
        check(Caller::Polls, Caller::Keeps);
    }

    #[test]
    fn a_reply_dropped_unpolled_still_runs() {
        check(Caller::Keeps, Caller::Drops);
    }

    /// An object's entry in its type's table and the activations it has
    /// had, as `hosted.rs` drives them: senders find or make the activation
    /// and push; eviction closes one, then removes it or runs what came
    /// meanwhile.
    /// An activation, in the model: its schedule.
    type Activation = Arc<Mutex<Schedule<u32, u32>>>;

    struct Table {
        /// The activation in the table, if any.
        slot: Mutex<Option<Activation>>,
        /// Messages in the order they were queued (recorded under the lock
        /// of the schedule they were pushed to).
        queued: Mutex<Vec<u32>>,
        /// Messages in the order their turns ran.
        ran: Mutex<Vec<u32>>,
        /// Turns and closes of the object running right now: the database
        /// is used by one of them at a time, over all activations.
        busy: AtomicUsize,
    }

    impl Table {
        fn new() -> Self {
            Table {
                slot: Mutex::new(None),
                queued: Mutex::new(Vec::new()),
                ran: Mutex::new(Vec::new()),
                busy: AtomicUsize::new(0),
            }
        }

        /// Runs turns while holding the right, until the mailbox is empty.
        fn hold(&self, schedule: &Mutex<Schedule<u32, u32>>, claim: Claim<u32>) {
            let mut instance = claim.instance;
            while let Some(message) = schedule.lock().unwrap().pop_or_release(&mut instance, 1) {
                assert_eq!(
                    self.busy.fetch_add(1, Ordering::SeqCst),
                    0,
                    "a turn overlapped a turn or a close"
                );
                instance.get_or_insert(INSTANCE);
                self.ran.lock().unwrap().push(message);
                self.busy.fetch_sub(1, Ordering::SeqCst);
            }
        }

        /// A caller that polls its reply: finds or makes the activation,
        /// pushes, and runs turns if it gets the right.
        fn call(&self, message: u32) {
            let schedule = loop {
                let schedule = self
                    .slot
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| Arc::new(Mutex::new(Schedule::new(0))))
                    .clone();
                let pushed = {
                    let mut locked = schedule.lock().unwrap();
                    let pushed =
                        locked.push(message, 1, Some(Bound { messages: 8, bytes: 64 }), Driver::Caller);
                    if pushed.is_ok() {
                        self.queued.lock().unwrap().push(message);
                    }
                    pushed
                };
                match pushed {
                    Ok(Pushed::Queued | Pushed::Watch) => break schedule,
                    Ok(Pushed::Spawn(_)) | Err(Refused::Full(_)) => panic!("a caller's push never spawns"),
                    // Evicted after we found it: the table no longer has it.
                    Err(Refused::Evicted(_)) => continue,
                }
            };
            let claim = schedule.lock().unwrap().claim();
            if let Some(claim) = claim {
                self.hold(&schedule, claim);
            }
        }

        /// One eviction sweep of the object, as `HostedType::evict_idle`.
        fn evict(&self) {
            let found = {
                let slot = self.slot.lock().unwrap();
                slot.as_ref().and_then(|schedule| {
                    let instance = schedule.lock().unwrap().evict_if_idle(u64::MAX)?;
                    Some((schedule.clone(), instance))
                })
            };
            let Some((schedule, _instance)) = found else { return };
            // Dropping the instance and closing the database.
            assert_eq!(self.busy.fetch_add(1, Ordering::SeqCst), 0, "a close overlapped a turn");
            self.busy.fetch_sub(1, Ordering::SeqCst);
            let closed = {
                let mut slot = self.slot.lock().unwrap();
                let closed = schedule.lock().unwrap().closed();
                if let Closed::Evicted = closed {
                    *slot = None;
                }
                closed
            };
            if let Closed::Reopened(claim) = closed {
                self.hold(&schedule, claim);
            }
        }

        /// Once every party has stopped: every message ran once, in queue
        /// order, and nothing is left running, closing or waiting.
        fn check_quiescent(&self) {
            if let Some(schedule) = self.slot.lock().unwrap().as_ref() {
                let schedule = schedule.lock().unwrap();
                assert!(!schedule.running && !schedule.closing && !schedule.evicted);
                assert!(schedule.mailbox.is_empty(), "a message was stranded");
            }
            assert_eq!(
                *self.ran.lock().unwrap(),
                *self.queued.lock().unwrap(),
                "every message runs once, in order"
            );
        }
    }

    #[test]
    fn calls_racing_an_eviction_run_after_its_close_and_never_beside_it() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound.get_or_insert(2);
        builder.check(|| {
            let table = Arc::new(Table::new());
            // An activation that has run a turn and gone idle.
            table.call(1);
            let parties = [
                thread::spawn({
                    let table = table.clone();
                    move || table.call(2)
                }),
                thread::spawn({
                    let table = table.clone();
                    move || table.call(3)
                }),
                thread::spawn({
                    let table = table.clone();
                    move || {
                        table.evict();
                        table.evict();
                    }
                }),
            ];
            for party in parties {
                party.join().unwrap();
            }
            table.check_quiescent();
        });
    }
}
