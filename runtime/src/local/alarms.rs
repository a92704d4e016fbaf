//! Alarms: one per object, at least once, delivered by a scheduler task.
//!
//! `Storage::set_alarm` writes the alarm into the object's own storage, in
//! the turn's transaction, and an entry into the node's alarm index
//! (`storage/alarm_index.rs`) before that. The scheduler task here sleeps
//! until the index's earliest entry, then sends an alarm message to the
//! object. The alarm's turn checks the object's storage: if no alarm is due
//! there (the turn that set it rolled back, or the alarm was moved or
//! deleted), the entry is simply dropped. Otherwise the alarm is cleared and
//! the `#[alarm]` handler runs, in one turn. If the handler panics or
//! returns an error, the turn is rolled back (so the alarm is still set) and
//! a retry is indexed with exponential backoff: 2 s, 4 s, 8 s, ... up to
//! [`MAX_ALARM_RETRIES`] retries, after which the alarm is dropped and a
//! warning logged.
//!
//! An alarm is run when the entry that delivers it is at or after the alarm
//! in storage, whatever the clock says by then: an entry is taken only once
//! its time has come, so a clock stepped back between taking and running
//! loses nothing. After the turn, the entry is removed and, in the same
//! index transaction, whatever alarm the object still has gets an entry.
//!
//! At most [`MAX_ALARMS_IN_FLIGHT`] alarm turns are delivered and not yet
//! finished at once; alarms that come due together beyond that wait, in
//! order of their time, for earlier ones to finish. Entries whose id does
//! not verify (minted under another secret, or damaged) are removed with a
//! warning.

use std::fmt;
use std::sync::Weak;
use std::time::Duration;

use super::activation::Activation;
use super::instance::{AlarmInfo, Instance, catch_panic};
use super::mailbox::Message;
use super::objects::Objects;
use super::schedule::Driver;
use crate::error::Error;
use crate::id::ObjectId;
use crate::observe::{AlarmEvent, Outcome, TurnWatch};
use crate::storage::AlarmDue;

/// How many times a failing alarm handler is retried.
pub const MAX_ALARM_RETRIES: u32 = 6;

/// The most alarm turns delivered and not yet finished, over all objects of
/// a runtime: alarms that come due together beyond this many wait until
/// earlier ones finish (a batch at a time), so that a crowd of due alarms
/// does not start a task and open a database for each at once.
pub const MAX_ALARMS_IN_FLIGHT: usize = 256;

/// The longest the scheduler sleeps without looking.
const IDLE_POLL: Duration = Duration::from_millis(250);

/// Why an alarm's turn failed (the alarm is then retried).
pub(crate) enum AlarmFailure {
    /// The handler returned this error.
    Handler(String),
    /// The handler panicked with this message.
    Panicked(String),
    /// The object could not be constructed, or its storage failed.
    Runtime(Error),
}

impl fmt::Display for AlarmFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlarmFailure::Handler(message) => write!(f, "the alarm handler returned an error: {message}"),
            AlarmFailure::Panicked(message) => write!(f, "the alarm handler panicked: {message}"),
            AlarmFailure::Runtime(err) => err.fmt(f),
        }
    }
}

impl AlarmFailure {
    /// The failed turn's `outcome`.
    fn outcome(&self) -> Outcome {
        match self {
            AlarmFailure::Handler(_) => Outcome::FAILED,
            AlarmFailure::Panicked(_) => Outcome::PANICKED,
            AlarmFailure::Runtime(err) => Outcome::error(err),
        }
    }

    /// The error that `stead::testing::run_alarm` reports for the failed
    /// turn of `due`, saying what becomes of the alarm (`retry`: the retry
    /// indexed, if any).
    pub(crate) fn into_error(
        self,
        type_name: &str,
        id: &ObjectId,
        due: &AlarmDue,
        retry: Option<u32>,
    ) -> Error {
        let next = match retry {
            Some(retry) => format!(
                "the alarm stays set and is retried (retry {retry} of {MAX_ALARM_RETRIES}); run it again \
                 to run that retry now"
            ),
            None if due.retries >= MAX_ALARM_RETRIES => {
                format!("that was its last retry ({MAX_ALARM_RETRIES}), so the alarm was dropped")
            }
            None => "its retry could not be indexed (see the warning logged)".to_string(),
        };
        let run = if due.retries == 0 { "first run".to_string() } else { format!("retry {}", due.retries) };
        match self {
            AlarmFailure::Handler(message) => Error::AlarmFailed(format!(
                "the alarm handler of `{type_name}` object {id} returned an error on its {run}: {message}; {next}"
            )),
            AlarmFailure::Panicked(message) => Error::Panicked(format!(
                "the alarm handler of `{type_name}` object {id} panicked on its {run}: {message}; its writes \
                 were rolled back and the instance dropped; {next}"
            )),
            AlarmFailure::Runtime(err) => err,
        }
    }
}

impl From<Error> for AlarmFailure {
    fn from(err: Error) -> Self {
        AlarmFailure::Runtime(err)
    }
}

/// The delay before retry number `retry` (1-based): `base`, `2 base`, `4 base`, ...
pub(crate) fn backoff(base: Duration, retry: u32) -> Duration {
    base.saturating_mul(1 << retry.saturating_sub(1).min(20))
}

/// What became of an alarm's turn (told to `stead::testing::run_alarm`; the
/// scheduler needs nothing of it).
pub(crate) enum AlarmTurn {
    /// No alarm was due in the object's storage: nothing ran.
    NotDue,
    /// The alarm ran (or was deleted, for a type without a handler) and its
    /// turn committed.
    Ran,
    /// The alarm's turn failed and was rolled back; `retry` is the retry
    /// now indexed, or none if that was the last try and the alarm is
    /// dropped.
    Failed { failure: AlarmFailure, retry: Option<u32> },
}

impl Activation {
    /// One turn: an alarm index entry came due.
    pub(super) async fn alarm_turn(&self, instance: &mut Option<Instance>, due: AlarmDue, watch: TurnWatch) {
        self.alarm_turn_then(instance, due, watch).await;
    }

    /// [`alarm_turn`](Self::alarm_turn), saying what became of it.
    pub(super) async fn alarm_turn_then(
        &self,
        instance: &mut Option<Instance>,
        due: AlarmDue,
        watch: TurnWatch,
    ) -> AlarmTurn {
        let storage = self.storage();
        self.begin_turn(instance);
        let outcome = match self.run_alarm(instance, &due).await {
            Ok(ran) => match self.commit_turn(&watch) {
                Ok(()) if ran => AlarmTurn::Ran,
                Ok(()) => AlarmTurn::NotDue,
                Err(err) => {
                    self.discard(instance);
                    self.retry_alarm(&due, AlarmFailure::Runtime(err))
                }
            },
            Err(failure) => {
                storage.rollback_turn();
                self.retry_alarm(&due, failure)
            }
        };
        let observed = match &outcome {
            AlarmTurn::Ran | AlarmTurn::NotDue => Outcome::OK,
            AlarmTurn::Failed { failure, .. } => failure.outcome(),
        };
        watch.end(&self.info.observe, observed);
        // The entry is done. An alarm the object still has (set by the
        // handler, moved later, or not run) gets an entry in the same index
        // transaction, unless a retry was just indexed for it.
        let retrying = matches!(outcome, AlarmTurn::Failed { retry: Some(_), .. });
        let next = if retrying { None } else { storage.alarm_millis().ok().flatten() };
        // Only once the turn is durable: the index must not forget an alarm
        // whose run a crash could still undo. If the sync failed, the entry
        // stays due, and the next try checks what the disk says.
        let root = self.host().storage().clone();
        storage.release(move |synced| match synced {
            Ok(()) => root.alarms.finish(&due, next),
            Err(_) => root.alarms.finish(&due, Some(due.at)),
        });
        outcome
    }

    /// Runs the handler if the object's own storage says the alarm is due;
    /// returns whether it was.
    async fn run_alarm(&self, instance: &mut Option<Instance>, due: &AlarmDue) -> Result<bool, AlarmFailure> {
        let storage = self.storage();
        let now = self.host().storage().alarms.now();
        match storage.alarm_millis()? {
            // Due by the entry, which was taken because its time had come:
            // an alarm at or before it is due even if the clock has since
            // stepped back.
            Some(at) if at <= due.at.max(now) => {}
            // Not set, or moved later (the entry was stale): nothing to run.
            _ => return Ok(false),
        }
        if !self.info.has_alarm {
            storage.delete_alarm()?;
            return Ok(true);
        }
        let object = self.instance(instance).await?;
        storage.delete_alarm()?;
        let info = AlarmInfo { retry_count: due.retries, is_retry: due.retries > 0 };
        self.info.observe.alarm(AlarmEvent::Fired);
        let failure = match catch_panic(object.alarm(info)).await {
            Ok(Ok(())) => return Ok(true),
            Ok(Err(message)) => AlarmFailure::Handler(message),
            Err(panic) => AlarmFailure::Panicked(panic),
        };
        self.discard(instance);
        Err(failure)
    }

    /// Indexes the next try of a failed alarm, or gives up after the last;
    /// says which retry is indexed, if one is.
    fn retry_alarm(&self, due: &AlarmDue, failure: AlarmFailure) -> AlarmTurn {
        let storage = self.storage();
        let index = &self.host().storage().alarms;
        let reason = failure.to_string();
        let retry = due.retries + 1;
        if retry > MAX_ALARM_RETRIES {
            self.info.observe.alarm(AlarmEvent::Dropped);
            tracing::warn!(
                object = %self.id, r#type = self.info.name, reason,
                "the alarm failed {} times; it is dropped", MAX_ALARM_RETRIES + 1
            );
            storage.begin_turn();
            match storage.delete_alarm() {
                Ok(()) => {
                    let _ = storage.commit_turn();
                }
                Err(_) => storage.rollback_turn(),
            }
            return AlarmTurn::Failed { failure, retry: None };
        }
        let delay = backoff(self.host().config().alarm_retry_delay, retry);
        let at = index.now().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        tracing::info!(object = %self.id, r#type = self.info.name, reason, retry, "the alarm failed; retrying");
        match index.schedule(self.info.name, &self.id, at, retry) {
            Ok(_) => {
                self.info.observe.alarm(AlarmEvent::Retried);
                AlarmTurn::Failed { failure, retry: Some(retry) }
            }
            Err(err) => {
                tracing::warn!(%err, "could not index the alarm's retry");
                AlarmTurn::Failed { failure, retry: None }
            }
        }
    }
}

/// Delivers due alarms until the runtime is gone or shutting down: at most
/// [`MAX_ALARMS_IN_FLIGHT`] alarm turns at a time, earliest first; the
/// others are taken as those finish.
pub(crate) async fn run_scheduler(objects: Weak<Objects>) {
    loop {
        let Some(live) = objects.upgrade() else { return };
        let host = live.host().clone();
        if host.lifecycle().is_closing() {
            return;
        }
        let index = &host.storage().alarms;
        // A node that fenced itself (its lease in PostgreSQL lapsed) fires
        // nothing: the cluster may count it dead. Its alarms wait, and fire
        // once it serves again.
        if let Err(err) = host.check_fence() {
            tracing::debug!(%err, "alarms wait: this node is fenced");
            drop(live);
            tokio::time::sleep(IDLE_POLL).await;
            continue;
        }
        // Only this node's types: entries of types hosted elsewhere (or no
        // longer hosted) are left alone.
        let types: Vec<&str> = live.type_names().collect();
        for due in index.take_due(index.now(), &types, MAX_ALARMS_IN_FLIGHT) {
            let Some(hosted) = live.hosted(&due.type_name) else { continue };
            match hosted.send(due.id, Message::Alarm(due.clone()), Driver::Task) {
                Ok(_) => {}
                Err((err @ Error::InvalidId(_), _)) => {
                    // Minted under another secret, or damaged: it never will
                    // verify, so retrying would only spin.
                    tracing::warn!(
                        %err, r#type = due.type_name, object = %due.id,
                        "an alarm index entry names an id that does not verify; the entry is removed"
                    );
                    index.discard(&due);
                }
                // Not expected (alarms are not refused when a mailbox is
                // full): left in flight, so that it is not retried in a loop,
                // and delivered again after a restart.
                Err((err, _)) => {
                    tracing::warn!(%err, r#type = due.type_name, object = %due.id, "could not deliver an alarm");
                }
            }
        }
        // With the most alarm turns in flight, wait for one to finish (its
        // `finish` wakes us) rather than for the next due time, which has
        // passed.
        let wait = if index.in_flight() >= MAX_ALARMS_IN_FLIGHT {
            IDLE_POLL
        } else {
            index.next_due(&types).map_or(IDLE_POLL, |at| {
                Duration::from_millis(u64::try_from(at.saturating_sub(index.now())).unwrap_or(0))
                    .min(IDLE_POLL)
            })
        };
        drop(live);
        // Wake early when an alarm is set or finishes; poll now and then to
        // notice shutdown.
        tokio::select! {
            _ = host.storage().alarms.changed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handler_error_is_reported_as_that_error_and_a_panic_as_a_panic() {
        let error = AlarmFailure::Handler("the mail server said no".into()).to_string();
        assert_eq!(error, "the alarm handler returned an error: the mail server said no");
        let panic = AlarmFailure::Panicked("index out of bounds".into()).to_string();
        assert_eq!(panic, "the alarm handler panicked: index out of bounds");
    }
}
