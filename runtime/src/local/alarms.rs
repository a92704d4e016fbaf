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

use std::fmt;
use std::sync::Weak;
use std::time::Duration;

use super::activation::Activation;
use super::instance::{AlarmInfo, Instance, catch_panic};
use super::mailbox::Message;
use super::objects::Objects;
use super::schedule::Driver;
use crate::error::Error;
use crate::storage::{AlarmDue, now_millis};

/// How many times a failing alarm handler is retried.
pub const MAX_ALARM_RETRIES: u32 = 6;

/// The longest the scheduler sleeps without looking.
const IDLE_POLL: Duration = Duration::from_millis(250);

/// Why an alarm's turn failed (the alarm is then retried).
enum AlarmFailure {
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

impl From<Error> for AlarmFailure {
    fn from(err: Error) -> Self {
        AlarmFailure::Runtime(err)
    }
}

/// The delay before retry number `retry` (1-based): `base`, `2 base`, `4 base`, ...
pub(crate) fn backoff(base: Duration, retry: u32) -> Duration {
    base.saturating_mul(1 << retry.saturating_sub(1).min(20))
}

impl Activation {
    /// One turn: an alarm index entry came due.
    pub(super) async fn alarm_turn(&self, instance: &mut Option<Instance>, due: AlarmDue) {
        let storage = self.storage();
        let index = &self.host().storage().alarms;
        storage.begin_turn();
        match self.run_alarm(instance, due.retries).await {
            Ok(()) => {
                if let Err(err) = storage.commit_turn() {
                    self.discard(instance);
                    self.retry_alarm(&due, &AlarmFailure::Runtime(err));
                }
            }
            Err(failure) => {
                storage.rollback_turn();
                self.retry_alarm(&due, &failure);
            }
        }
        index.finish(&due);
        // Keep the index in step with storage: a later alarm gets its entry.
        if let Ok(Some(at)) = storage.alarm_millis()
            && at > due.at
        {
            let _ = index.schedule(self.info.name, &self.id, at, 0);
        }
    }

    /// Runs the handler if the object's own storage says the alarm is due.
    async fn run_alarm(&self, instance: &mut Option<Instance>, retries: u32) -> Result<(), AlarmFailure> {
        let storage = self.storage();
        match storage.alarm_millis()? {
            Some(at) if at <= now_millis() => {}
            // Not set, or moved later (the entry was stale): nothing to run.
            _ => return Ok(()),
        }
        if !self.info.has_alarm {
            return Ok(storage.delete_alarm()?);
        }
        let object = self.instance(instance).await?;
        storage.delete_alarm()?;
        let info = AlarmInfo { retry_count: retries, is_retry: retries > 0 };
        let failure = match catch_panic(object.alarm(info)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(message)) => AlarmFailure::Handler(message),
            Err(panic) => AlarmFailure::Panicked(panic),
        };
        self.discard(instance);
        Err(failure)
    }

    /// Indexes the next try of a failed alarm, or gives up after the last.
    fn retry_alarm(&self, due: &AlarmDue, failure: &AlarmFailure) {
        let storage = self.storage();
        let reason = failure.to_string();
        let retry = due.retries + 1;
        if retry > MAX_ALARM_RETRIES {
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
            return;
        }
        let delay = backoff(self.host().config().alarm_retry_delay, retry);
        let at = now_millis().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        tracing::info!(object = %self.id, r#type = self.info.name, reason, retry, "the alarm failed; retrying");
        if let Err(err) = self.host().storage().alarms.schedule(self.info.name, &self.id, at, retry) {
            tracing::warn!(%err, "could not index the alarm's retry");
        }
    }
}

/// Delivers due alarms until the runtime is gone or shutting down.
pub(crate) async fn run_scheduler(objects: Weak<Objects>) {
    loop {
        let Some(live) = objects.upgrade() else { return };
        let host = live.host().clone();
        if host.lifecycle().is_closing() {
            return;
        }
        let index = &host.storage().alarms;
        for due in index.take_due(now_millis()) {
            let Some(hosted) = live.hosted(&due.type_name) else {
                // Another node's type (or one no longer hosted): left in the
                // index, and in flight so it is not looked at again.
                continue;
            };
            let id = due.id;
            if let Err((err, _)) = hosted.send(id, Message::Alarm(due.clone()), Driver::Task) {
                tracing::warn!(%err, object = %id, "could not deliver an alarm");
                index.release(&due);
            }
        }
        let wait = index.next_due().map_or(IDLE_POLL, |at| {
            Duration::from_millis(u64::try_from(at.saturating_sub(now_millis())).unwrap_or(0)).min(IDLE_POLL)
        });
        drop(live);
        // Wake early when an alarm is set; poll now and then to notice shutdown.
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
