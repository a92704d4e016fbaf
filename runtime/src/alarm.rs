//! Alarms: one per object, at-least-once, found after a restart without
//! loading every object.
//!
//! The object's own storage holds the truth (`Storage::set_alarm` writes it
//! in the turn's transaction). Beside it, the node keeps an *index* of
//! `(type, id, time, retries)` entries in its own database
//! (`data_dir/alarms.sqlite`), written *before* the object's turn commits. A
//! scheduler task sleeps until the earliest entry, then delivers an alarm
//! message to the object; the alarm turn checks the object's storage: if no
//! alarm is due there (the turn that set it rolled back, or the alarm was
//! moved or deleted), the entry is simply dropped. Otherwise the alarm is
//! cleared and the `#[alarm]` handler runs, in one turn. If the handler
//! panics or returns an error the turn is rolled back (so the alarm is still
//! set) and a retry is indexed with exponential backoff: 2 s, 4 s, 8 s, ...
//! up to 6 retries, after which the alarm is dropped and a warning logged.
//!
//! An index entry is deleted only after its alarm turn has finished, so a
//! crash at any point leads to the alarm being delivered again: at least
//! once.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, params};
use tokio::sync::Notify;

use crate::drive::Driver;
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::mailbox::Message;
use crate::runtime::WeakRuntime;
use crate::storage::unix_millis;
use crate::sync::lock;

/// How many times a failing alarm handler is retried.
pub const MAX_ALARM_RETRIES: u32 = 6;

/// One entry of the index: an alarm to deliver.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct AlarmDue {
    pub(crate) type_name: String,
    pub(crate) id: ObjectId,
    pub(crate) at: i64,
    pub(crate) retries: u32,
}

/// The node-level index of alarms.
pub(crate) struct AlarmIndex {
    conn: Mutex<Connection>,
    /// Entries delivered whose turn has not finished: not delivered again
    /// while this process lives.
    in_flight: Mutex<HashSet<AlarmDue>>,
    /// Woken when an entry is added, so the scheduler can sleep less.
    pub(crate) changed: Notify,
}

impl AlarmIndex {
    /// Opens the index in `data_dir`, or in memory.
    pub(crate) fn open(data_dir: Option<&Path>) -> Result<Self> {
        let conn = match data_dir {
            Some(dir) => {
                let path = dir.join("alarms.sqlite");
                let conn =
                    Connection::open(&path).map_err(|e| index_error(&path.display().to_string(), e))?;
                conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
                    .map_err(|e| index_error(&path.display().to_string(), e))?;
                conn
            }
            None => Connection::open_in_memory().map_err(|e| index_error("memory", e))?,
        };
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS alarms (
                 type TEXT NOT NULL, id BLOB NOT NULL, at INTEGER NOT NULL, retries INTEGER NOT NULL,
                 PRIMARY KEY (type, id, at, retries)) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS alarms_by_time ON alarms (at);",
        )
        .map_err(|e| index_error("the alarm index", e))?;
        Ok(AlarmIndex {
            conn: Mutex::new(conn),
            in_flight: Mutex::new(HashSet::new()),
            changed: Notify::new(),
        })
    }

    /// Adds an entry (idempotent).
    pub(crate) fn schedule(&self, type_name: &str, id: &ObjectId, at: i64, retries: u32) -> Result<()> {
        self.conn()
            .prepare_cached("INSERT OR IGNORE INTO alarms (type, id, at, retries) VALUES (?1, ?2, ?3, ?4)")
            .and_then(|mut stmt| stmt.execute(params![type_name, id.as_bytes().as_slice(), at, retries]))
            .map_err(|e| index_error("the alarm index", e))?;
        self.changed.notify_one();
        Ok(())
    }

    /// Entries due at `now`, not already in flight; they are now in flight.
    pub(crate) fn take_due(&self, now: i64) -> Vec<AlarmDue> {
        let rows = self.query("SELECT type, id, at, retries FROM alarms WHERE at <= ?1 ORDER BY at", now);
        let mut in_flight = lock(&self.in_flight);
        rows.into_iter().filter(|due| in_flight.insert(due.clone())).collect()
    }

    /// When the earliest entry not in flight is due.
    pub(crate) fn next_due(&self) -> Option<i64> {
        let rows = self
            .query("SELECT type, id, at, retries FROM alarms WHERE at >= ?1 ORDER BY at LIMIT 64", i64::MIN);
        let in_flight = lock(&self.in_flight);
        rows.into_iter().find(|due| !in_flight.contains(due)).map(|due| due.at)
    }

    /// Removes an entry whose turn has finished.
    pub(crate) fn finish(&self, due: &AlarmDue) {
        let removed = self
            .conn()
            .prepare_cached("DELETE FROM alarms WHERE type = ?1 AND id = ?2 AND at = ?3 AND retries = ?4")
            .and_then(|mut stmt| {
                stmt.execute(params![due.type_name, due.id.as_bytes().as_slice(), due.at, due.retries])
            });
        if let Err(err) = removed {
            // Left in the index, the entry is delivered again after a restart and
            // then finds no alarm due: harmless.
            tracing::warn!(%err, "could not remove a finished alarm from the index");
        }
        lock(&self.in_flight).remove(due);
    }

    /// Gives an entry back without finishing it (it was not delivered).
    pub(crate) fn release(&self, due: &AlarmDue) {
        lock(&self.in_flight).remove(due);
    }

    fn query(&self, sql: &str, bound: i64) -> Vec<AlarmDue> {
        let conn = self.conn();
        let rows = conn.prepare_cached(sql).and_then(|mut stmt| {
            stmt.query_map([bound], |row| {
                let id: Vec<u8> = row.get(1)?;
                Ok((row.get::<_, String>(0)?, id, row.get::<_, i64>(2)?, row.get::<_, u32>(3)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        });
        match rows {
            Ok(rows) => rows
                .into_iter()
                .filter_map(|(type_name, id, at, retries)| {
                    let id = ObjectId::from_slice(&id)?;
                    Some(AlarmDue { type_name, id, at, retries })
                })
                .collect(),
            Err(err) => {
                tracing::warn!(%err, "could not read the alarm index");
                Vec::new()
            }
        }
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        lock(&self.conn)
    }
}

fn index_error(what: &str, err: rusqlite::Error) -> Error {
    Error::Storage(format!("the node's alarm index ({what}) failed: {err}"))
}

/// The delay before retry number `retry` (1-based): `base`, `2 base`, `4 base`, ...
pub(crate) fn backoff(base: Duration, retry: u32) -> Duration {
    base.saturating_mul(1 << retry.saturating_sub(1).min(20))
}

/// Milliseconds since the epoch, now.
pub(crate) fn now_millis() -> i64 {
    unix_millis(SystemTime::now())
}

/// Delivers due alarms until the runtime is gone or shutting down.
pub(crate) async fn run_scheduler(runtime: WeakRuntime) {
    loop {
        let Some(rt) = runtime.upgrade() else { return };
        if rt.is_closing() {
            return;
        }
        let root = rt.storage_root();
        let index = &root.alarms;
        for due in index.take_due(now_millis()) {
            let Some(hosted) = rt.hosted(&due.type_name) else {
                // Another node's type (or one no longer hosted): left in the
                // index, and in flight so it is not looked at again.
                continue;
            };
            let id = due.id;
            if let Err((err, _)) = hosted.send(&rt, id, Message::Alarm(due.clone()), Driver::Task) {
                tracing::warn!(%err, object = %id, "could not deliver an alarm");
                index.release(&due);
            }
        }
        let wait = index.next_due().map_or(IDLE_POLL, |at| {
            Duration::from_millis(u64::try_from(at.saturating_sub(now_millis())).unwrap_or(0)).min(IDLE_POLL)
        });
        drop(rt);
        // Wake early when an alarm is set; poll now and then to notice shutdown.
        tokio::select! {
            _ = root.alarms.changed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The longest the scheduler sleeps without looking.
const IDLE_POLL: Duration = Duration::from_millis(250);
