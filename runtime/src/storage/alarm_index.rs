//! The node's index of alarms: finds every object's alarm after a restart
//! without loading every object.
//!
//! The object's own storage holds the truth (`Storage::set_alarm` writes it
//! in the turn's transaction). Beside it, the node keeps this index of
//! `(type, id, time, retries)` entries in its own database
//! (`data_dir/alarms.sqlite`), written *before* the object's turn commits, so
//! that a committed alarm always has an entry. An entry whose alarm is not
//! set in the object's storage when it comes due is simply dropped (the turn
//! that set it rolled back, or the alarm was moved); an entry is deleted only
//! after its alarm turn has finished, so a crash at any point leads to the
//! alarm being delivered again: at least once. The scheduler that delivers
//! due entries lives with the objects (`local/alarms.rs`).

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, params};
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::sync::lock;

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
