//! Turns asked for by `stead::testing`: a closure run on the instance, and
//! the object's alarm run now.
//!
//! Both are messages in the object's mailbox, so they run in order with its
//! calls, one turn at a time, through the same path as every turn (see
//! `activation.rs`): a closure's turn passes the same output gate as a
//! call's, and the alarm's turn is the one the scheduler's alarms take
//! (`alarms.rs`), with the same retries. The only difference is who
//! delivers the alarm's index entry, and when: here, now, as if the
//! alarm's time had come.

use std::any::Any;
use std::panic::AssertUnwindSafe;

use super::activation::{Activation, Ending};
use super::alarms::AlarmTurn;
use super::instance::{Instance, panic_message};
use super::mailbox::ReplySender;
use crate::error::Error;
use crate::storage::{AlarmDue, Storage};

/// What a closure run as a turn gets: the instance, as its own type (to be
/// downcast), and the object's storage.
pub(crate) type VisitFn = Box<dyn FnOnce(&mut dyn Any, &Storage) + Send>;

/// A turn asked for by `stead::testing`.
pub(crate) enum Visit {
    /// Runs a closure on the instance (constructed first if there is none);
    /// the reply is empty once the turn has committed (the closure hands its
    /// own result over by itself).
    Instance { run: VisitFn, reply: ReplySender },
    /// Runs the object's alarm now, if one is set. The reply is `[1]` when
    /// it ran and its turn committed, `[]` when no alarm was set, or the
    /// error of the failed alarm (which is then retried as any alarm is).
    Alarm { reply: ReplySender },
}

impl Activation {
    /// One turn asked for by `stead::testing`.
    pub(super) async fn visit(&self, instance: &mut Option<Instance>, visit: Visit) {
        match visit {
            Visit::Instance { run, reply } => self.visit_instance(instance, run, reply).await,
            Visit::Alarm { reply } => {
                let outcome = self.alarm_now(instance).await;
                // The caller may have stopped waiting; the turn counts all the same.
                let _ = reply.send(outcome);
            }
        }
    }

    async fn visit_instance(&self, instance: &mut Option<Instance>, run: VisitFn, reply: ReplySender) {
        self.begin_turn(instance);
        let ending = match self.instance(instance).await {
            Err(err) => Ending::RollBack(err),
            Ok(object) => {
                let storage = self.storage().clone();
                match std::panic::catch_unwind(AssertUnwindSafe(|| run(object.as_any(), &storage))) {
                    Ok(()) => Ending::Commit(Ok(Vec::new())),
                    Err(payload) => {
                        self.discard(instance);
                        Ending::RollBack(Error::Panicked(format!(
                            "the closure given to `with_instance` panicked on `{}` object {}: {}; its \
                             writes were rolled back, the instance was dropped and the next call \
                             constructs a fresh one",
                            self.info.name,
                            self.id,
                            panic_message(payload.as_ref())
                        )))
                    }
                }
            }
        };
        self.end_turn(instance, ending, reply);
    }

    /// Runs the object's alarm now, through the alarm turn, if one is set.
    async fn alarm_now(&self, instance: &mut Option<Instance>) -> crate::Result<Vec<u8>> {
        let index = &self.host().storage().alarms;
        let entries = index.entries_of(self.info.name, &self.id)?;
        if entries.is_empty() {
            // Every alarm set has an entry, written before its turn
            // committed: no entry, no alarm (and no storage opened to ask).
            return Ok(Vec::new());
        }
        let Some(at) = self.storage().alarm_millis()? else {
            // The turns that set them rolled back, or the alarm was deleted:
            // the scheduler would drop these entries when they came due.
            entries.iter().for_each(|stale| index.discard(stale));
            return Ok(Vec::new());
        };
        // The entry that runs the alarm, with its retry count: one made by
        // setting the alarm to this time, else the latest retry of a failed
        // run, else the first one after (the alarm was moved earlier).
        let picked = entries
            .iter()
            .find(|due| due.at == at && due.retries == 0)
            .or_else(|| entries.iter().filter(|due| due.retries > 0).max_by_key(|due| due.retries))
            .or_else(|| entries.iter().find(|due| due.at >= at));
        // Delivered as if its time had come: an entry due before the alarm
        // (a retry of a run made early, here) would find it not yet due.
        let due = AlarmDue {
            type_name: self.info.name.to_string(),
            id: self.id,
            at: picked.map_or(at, |due| due.at.max(at)),
            retries: picked.map_or(0, |due| due.retries),
        };
        // The others are stale, and one delivered as `due` is done with it:
        // the turn's `finish` indexes whatever alarm remains.
        entries.iter().filter(|entry| **entry != due).for_each(|stale| index.discard(stale));
        index.take(&due);
        match self.alarm_turn_then(instance, due.clone()).await {
            AlarmTurn::NotDue => Ok(Vec::new()),
            AlarmTurn::Ran => Ok(vec![1]),
            AlarmTurn::Failed { failure, retry } => {
                Err(failure.into_error(self.info.name, &self.id, &due, retry))
            }
        }
    }
}
