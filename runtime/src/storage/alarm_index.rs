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
//!
//! # Writes and durability
//! Entries are written in batches (`group_commit.rs`): the `set_alarm`s of
//! concurrent turns share one transaction and one sync, instead of queueing
//! behind one lock for a sync each. The index is synced as the runtime's
//! [`Durability`] says:
//! - `Full`: the batch that holds an alarm's entry is fsynced before
//!   `set_alarm` returns, so before the turn that set the alarm can commit:
//!   a committed alarm always has its entry on disk.
//! - `Normal`: no fsync per write. The entry reaches the operating system
//!   before the turn's commit does, so a process crash, which `Normal`
//!   survives, loses neither: a committed alarm keeps its entry. A power
//!   loss may lose the last turns, and may also keep a turn's commit while
//!   losing the unsynced entry written before it; so with `Normal`, opening
//!   an object's database gives its alarm an entry if the object has none
//!   (`AlarmIndex::ensure`): such an alarm fires, at the latest, when its
//!   object is next used.
//!
//! # Delivery
//! [`take_due`](AlarmIndex::take_due) hands the scheduler the earliest due
//! entries of the types this node hosts, marking them *in flight* until
//! their turn finishes, and never more than a given number in flight at
//! once; [`next_due`](AlarmIndex::next_due) says when the next of those
//! that is not in flight is due. Both read the same scan, so they agree.
//! Entries of types not hosted here are left alone; an entry whose id is
//! not an id at all is removed when it is seen (with a warning), and one
//! whose id does not verify is removed by the scheduler
//! ([`discard`](AlarmIndex::discard)): neither can ever be delivered.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};

use rusqlite::types::Value;
use rusqlite::{Connection, params};
use tokio::sync::Notify;

use super::durability::Durability;
use super::group_commit::GroupCommit;
use super::now_millis;
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

/// A change to the index, written in a batch with others.
enum Change {
    /// Adds an entry (nothing if it is there).
    Add(AlarmDue),
    /// Adds an entry unless the object has one.
    AddIfNone(AlarmDue),
    /// Removes an entry.
    Remove(AlarmDue),
    /// Removes an entry whose values are not an entry's (as read).
    RemoveMalformed(Malformed),
}

/// A row of the index that is not an entry: its id is not an object id,
/// or its time or retry count is not a number in range (a damaged file).
struct Malformed {
    type_name: String,
    id: Value,
    at: Value,
    retries: Value,
}

/// The node-level index of alarms.
pub(crate) struct AlarmIndex {
    conn: Mutex<Connection>,
    writes: GroupCommit<Change>,
    /// Entries delivered whose turn has not finished: not delivered again
    /// while this process lives.
    in_flight: Mutex<HashSet<AlarmDue>>,
    /// Woken when an entry is added or a delivered one finishes, so that
    /// the scheduler looks again.
    pub(crate) changed: Notify,
    /// Milliseconds added to the system clock (moved only by tests).
    skew: AtomicI64,
}

impl AlarmIndex {
    /// Opens the index in `data_dir`, or in memory; it is synced as
    /// `durability` says (see the module docs).
    pub(crate) fn open(data_dir: Option<&Path>, durability: Durability) -> Result<Self> {
        let (conn, what) = match data_dir {
            Some(dir) => {
                let path = dir.join("alarms.sqlite");
                let what = path.display().to_string();
                (Connection::open(&path).map_err(|e| index_error(&what, e))?, what)
            }
            None => (Connection::open_in_memory().map_err(|e| index_error("memory", e))?, "memory".into()),
        };
        let synchronous = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous};
             CREATE TABLE IF NOT EXISTS alarms (
                 type TEXT NOT NULL, id BLOB NOT NULL, at INTEGER NOT NULL, retries INTEGER NOT NULL,
                 PRIMARY KEY (type, id, at, retries)) WITHOUT ROWID;
             DROP INDEX IF EXISTS alarms_by_time;
             CREATE INDEX IF NOT EXISTS alarms_by_type_and_time ON alarms (type, at);"
        ))
        .map_err(|e| index_error(&what, e))?;
        Ok(AlarmIndex {
            conn: Mutex::new(conn),
            writes: GroupCommit::new(),
            in_flight: Mutex::new(HashSet::new()),
            changed: Notify::new(),
            skew: AtomicI64::new(0),
        })
    }

    /// The node's clock for alarms, in milliseconds since the epoch.
    pub(crate) fn now(&self) -> i64 {
        now_millis().saturating_add(self.skew.load(Ordering::Relaxed))
    }

    /// Moves the node's clock for alarms by `millis` (tests only: a clock
    /// step).
    pub(crate) fn step_clock(&self, millis: i64) {
        self.skew.fetch_add(millis, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// Adds an entry (idempotent); it is durable when this returns.
    pub(crate) fn schedule(&self, type_name: &str, id: &ObjectId, at: i64, retries: u32) -> Result<()> {
        let due = AlarmDue { type_name: type_name.to_string(), id: *id, at, retries };
        self.write(vec![Change::Add(due)])?;
        self.changed.notify_one();
        Ok(())
    }

    /// Adds an entry for the alarm of object `id` at `at`, unless the index
    /// has an entry for the object already (any entry will find the alarm).
    pub(crate) fn ensure(&self, type_name: &str, id: &ObjectId, at: i64) -> Result<()> {
        let due = AlarmDue { type_name: type_name.to_string(), id: *id, at, retries: 0 };
        self.write(vec![Change::AddIfNone(due)])?;
        self.changed.notify_one();
        Ok(())
    }

    /// Removes an entry whose turn has finished and, in the same
    /// transaction, adds one for the alarm its object still has (`next`),
    /// so that there is no moment without either.
    pub(crate) fn finish(&self, due: &AlarmDue, next: Option<i64>) {
        let mut changes = vec![Change::Remove(due.clone())];
        if let Some(at) = next {
            changes.push(Change::Add(AlarmDue { at, retries: 0, ..due.clone() }));
        }
        if let Err(err) = self.write(changes) {
            // Left in the index, the entry is delivered again after a restart and
            // then finds no alarm due: harmless. (A lost `next` is found again
            // by `ensure` with `Normal`, and is a storage failure with `Full`.)
            tracing::warn!(%err, "could not update the alarm index after an alarm's turn");
        }
        lock(&self.in_flight).remove(due);
        self.changed.notify_one();
    }

    /// Removes an entry that can never be delivered (its id does not
    /// verify). The caller warns.
    pub(crate) fn discard(&self, due: &AlarmDue) {
        if let Err(err) = self.write(vec![Change::Remove(due.clone())]) {
            tracing::warn!(%err, "could not remove an undeliverable entry from the alarm index");
        }
        lock(&self.in_flight).remove(due);
        self.changed.notify_one();
    }

    /// The earliest entries of `types` due at `now` and not in flight, as
    /// many as keep at most `max_in_flight` in flight; they are now in
    /// flight.
    pub(crate) fn take_due(&self, now: i64, types: &[&str], max_in_flight: usize) -> Vec<AlarmDue> {
        let room = max_in_flight.saturating_sub(self.in_flight());
        if room == 0 {
            return Vec::new();
        }
        let mut in_flight = lock(&self.in_flight);
        let due = self.scan(types, now, room, &in_flight);
        in_flight.extend(due.iter().cloned());
        due
    }

    /// When the earliest entry of `types` not in flight is due.
    pub(crate) fn next_due(&self, types: &[&str]) -> Option<i64> {
        let in_flight = lock(&self.in_flight);
        self.scan(types, i64::MAX, 1, &in_flight).first().map(|due| due.at)
    }

    /// How many entries are in flight.
    pub(crate) fn in_flight(&self) -> usize {
        lock(&self.in_flight).len()
    }

    /// The entries of one object that are not in flight, earliest first
    /// (for `stead::testing::run_alarm`, which delivers one of them itself).
    pub(crate) fn entries_of(&self, type_name: &str, id: &ObjectId) -> Result<Vec<AlarmDue>> {
        let in_flight = lock(&self.in_flight);
        let conn = self.conn();
        let read = (|| {
            let mut stmt = conn.prepare_cached(
                "SELECT at, retries FROM alarms WHERE type = ?1 AND id = ?2 ORDER BY at, retries DESC",
            )?;
            let rows = stmt.query_map(params![type_name, id.as_bytes().as_slice()], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, u32>(1)?))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })();
        let rows = read.map_err(|e| index_error("memory or alarms.sqlite", e))?;
        Ok(rows
            .into_iter()
            .map(|(at, retries)| AlarmDue { type_name: type_name.to_string(), id: *id, at, retries })
            .filter(|due| !in_flight.contains(due))
            .collect())
    }

    /// Marks an entry in flight, as [`take_due`](Self::take_due) does, until
    /// [`finish`](Self::finish); false if it already was.
    pub(crate) fn take(&self, due: &AlarmDue) -> bool {
        lock(&self.in_flight).insert(due.clone())
    }

    /// The earliest `limit` entries of `types` due at `bound` that are not
    /// in flight, earliest first. Rows that are not entries are removed
    /// (each warned about once: it is then gone).
    fn scan(&self, types: &[&str], bound: i64, limit: usize, in_flight: &HashSet<AlarmDue>) -> Vec<AlarmDue> {
        let mut found = Vec::new();
        let mut malformed = Vec::new();
        {
            let conn = self.conn();
            for type_name in types {
                let scanned =
                    scan_type(&conn, type_name, bound, limit, in_flight, &mut found, &mut malformed);
                if let Err(err) = scanned {
                    tracing::warn!(%err, r#type = type_name, "could not read the alarm index");
                }
            }
        }
        for row in malformed {
            tracing::warn!(
                r#type = row.type_name, id = ?row.id, at = ?row.at, retries = ?row.retries,
                "the alarm index has an entry that is not one (its id, time or retry count is \
                 malformed); it is removed"
            );
            if let Err(err) = self.write(vec![Change::RemoveMalformed(row)]) {
                tracing::warn!(%err, "could not remove a malformed entry from the alarm index");
            }
        }
        found.sort_by_key(|due| due.at);
        found.truncate(limit);
        found
    }

    fn write(&self, changes: Vec<Change>) -> Result<()> {
        self.writes
            .submit(changes, |batch| self.write_batch(batch))
            .map_err(|err| Error::Storage(format!("the node's alarm index failed: {err}")))
    }

    /// Writes one batch of changes in one transaction.
    fn write_batch(&self, batch: Vec<Change>) -> std::result::Result<(), String> {
        let conn = self.conn();
        let written = (|| {
            conn.execute_batch("BEGIN")?;
            for change in &batch {
                match change {
                    Change::Add(due) => conn
                        .prepare_cached(
                            "INSERT OR IGNORE INTO alarms (type, id, at, retries) VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![due.type_name, due.id.as_bytes().as_slice(), due.at, due.retries])?,
                    Change::AddIfNone(due) => conn
                        .prepare_cached(
                            "INSERT INTO alarms (type, id, at, retries) SELECT ?1, ?2, ?3, ?4
                             WHERE NOT EXISTS (SELECT 1 FROM alarms WHERE type = ?1 AND id = ?2)",
                        )?
                        .execute(params![due.type_name, due.id.as_bytes().as_slice(), due.at, due.retries])?,
                    Change::Remove(due) => conn
                        .prepare_cached(
                            "DELETE FROM alarms WHERE type = ?1 AND id = ?2 AND at = ?3 AND retries = ?4",
                        )?
                        .execute(params![due.type_name, due.id.as_bytes().as_slice(), due.at, due.retries])?,
                    Change::RemoveMalformed(row) => conn
                        .prepare_cached(
                            "DELETE FROM alarms WHERE type = ?1 AND id IS ?2 AND at IS ?3 AND retries IS ?4",
                        )?
                        .execute(params![row.type_name, row.id, row.at, row.retries])?,
                };
            }
            conn.execute_batch("COMMIT")
        })();
        written.map_err(|err| {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            err.to_string()
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        lock(&self.conn)
    }
}

/// Adds to `found` the earliest `limit` entries of `type_name` due at
/// `bound` and not in flight, and to `malformed` the rows met that are not
/// entries.
fn scan_type(
    conn: &Connection,
    type_name: &str,
    bound: i64,
    limit: usize,
    in_flight: &HashSet<AlarmDue>,
    found: &mut Vec<AlarmDue>,
    malformed: &mut Vec<Malformed>,
) -> rusqlite::Result<()> {
    let mut stmt =
        conn.prepare_cached("SELECT id, at, retries FROM alarms WHERE type = ?1 AND at <= ?2 ORDER BY at")?;
    let mut rows = stmt.query(params![type_name, bound])?;
    // Rows are read one by one and the scan stops after `limit` entries not
    // in flight: at most the entries in flight plus `limit` rows.
    let mut taken = 0;
    while taken < limit
        && let Some(row) = rows.next()?
    {
        // Read as plain values: a damaged row is removed, not an error that
        // would stop every scan at it.
        let (id, at, retries): (Value, Value, Value) = (row.get(0)?, row.get(1)?, row.get(2)?);
        let entry = match (&id, &at, &retries) {
            (Value::Blob(bytes), Value::Integer(at), Value::Integer(retries)) => ObjectId::from_slice(bytes)
                .zip(u32::try_from(*retries).ok())
                .map(|(id, retries)| (id, *at, retries)),
            _ => None,
        };
        let Some((id, at, retries)) = entry else {
            malformed.push(Malformed { type_name: type_name.to_string(), id, at, retries });
            continue;
        };
        let due = AlarmDue { type_name: type_name.to_string(), id, at, retries };
        if !in_flight.contains(&due) {
            found.push(due);
            taken += 1;
        }
    }
    Ok(())
}

fn index_error(what: &str, err: rusqlite::Error) -> Error {
    Error::Storage(format!("the node's alarm index ({what}) failed: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_slice(&[n; 32]).unwrap()
    }

    #[test]
    fn next_due_sees_past_any_number_of_entries_in_flight() {
        let index = AlarmIndex::open(None, Durability::Full).unwrap();
        for n in 0..100 {
            index.schedule("T", &id(n), i64::from(n), 0).unwrap();
        }
        index.schedule("T", &id(200), 5_000, 0).unwrap();
        let taken = index.take_due(1_000, &["T"], 1_000);
        assert_eq!(taken.len(), 100);
        assert_eq!(index.next_due(&["T"]), Some(5_000), "the entry after those in flight is due next");
    }

    #[test]
    fn no_more_entries_are_taken_than_may_be_in_flight() {
        let index = AlarmIndex::open(None, Durability::Full).unwrap();
        for n in 0..10 {
            index.schedule("T", &id(n), i64::from(n), 0).unwrap();
        }
        let first = index.take_due(1_000, &["T"], 4);
        assert_eq!(first.iter().map(|due| due.at).collect::<Vec<_>>(), [0, 1, 2, 3], "the earliest first");
        assert!(index.take_due(1_000, &["T"], 4).is_empty(), "four are in flight already");
        assert_eq!(index.next_due(&["T"]), Some(4));
        index.finish(&first[0], None);
        assert_eq!(index.take_due(1_000, &["T"], 4).iter().map(|due| due.at).collect::<Vec<_>>(), [4]);
    }

    #[test]
    fn entries_of_types_not_hosted_here_are_neither_taken_nor_due() {
        let index = AlarmIndex::open(None, Durability::Full).unwrap();
        index.schedule("Elsewhere", &id(1), 0, 0).unwrap();
        index.schedule("Here", &id(2), 10, 0).unwrap();
        assert_eq!(index.next_due(&["Here"]), Some(10));
        assert_eq!(index.take_due(5, &["Here"], 8), []);
    }

    #[test]
    fn rows_that_are_not_entries_are_removed_and_do_not_stop_the_others() {
        let index = AlarmIndex::open(None, Durability::Full).unwrap();
        index
            .conn()
            .execute_batch(
                "INSERT INTO alarms VALUES ('T', x'0102', 1, 0);
                 INSERT INTO alarms VALUES ('T', x'0303030303030303030303030303030303030303030303030303030303030303', 2, -1);
                 INSERT INTO alarms VALUES ('T', 'text', 3, 0);
                 INSERT INTO alarms VALUES ('T', x'0404040404040404040404040404040404040404040404040404040404040404', 2.5, 0);",
            )
            .unwrap();
        index.schedule("T", &id(5), 9, 0).unwrap();
        let taken = index.take_due(100, &["T"], 8);
        assert_eq!(taken.iter().map(|due| due.id).collect::<Vec<_>>(), [id(5)]);
        let left: i64 = index.conn().query_row("SELECT count(*) FROM alarms", [], |row| row.get(0)).unwrap();
        assert_eq!(left, 1, "only the good entry is left");
    }

    #[test]
    fn with_normal_durability_the_index_is_not_synced_per_write() {
        let dir = tempfile::tempdir().unwrap();
        let index = AlarmIndex::open(Some(dir.path()), Durability::Normal).unwrap();
        let synchronous: i64 = index.conn().query_row("PRAGMA synchronous", [], |row| row.get(0)).unwrap();
        assert_eq!(synchronous, 1, "synchronous = NORMAL: WAL commits are not synced");
        let index = AlarmIndex::open(Some(dir.path()), Durability::Full).unwrap();
        let synchronous: i64 = index.conn().query_row("PRAGMA synchronous", [], |row| row.get(0)).unwrap();
        assert_eq!(synchronous, 2, "synchronous = FULL");
    }
}
