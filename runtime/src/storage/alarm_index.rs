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
//! concurrent turns share one transaction, instead of queueing behind one
//! lock each. No write syncs (`synchronous = NORMAL` in WAL mode): the
//! entry reaches the operating system before the turn's commit does, so a
//! process crash loses neither, and a committed alarm keeps its entry. The
//! index is made durable as the runtime's [`Durability`] says:
//! - `Full`: `set_alarm` notes the batch that holds its entry, and the
//!   output gate (`flush.rs`) syncs the index up to that batch
//!   ([`sync_through`](AlarmIndex::sync_through), on a sync thread, one
//!   `fdatasync` for every batch written since the last) *before* it syncs
//!   the object's commit: so no reply leaves, and no alarm counts as set,
//!   before its entry is on disk, and no thread that runs turns waits for
//!   the index's disk. The index's WAL is checkpointed there too (every
//!   [`CHECKPOINT_BATCHES`] batches), never by a writer.
//! - `Normal`: nothing syncs the index but SQLite's own checkpoints.
//!
//! A power loss may lose the last turns, and may also keep a turn's commit
//! while losing the unsynced entry written before it: with `Normal`, for
//! any turn; with `Full`, only for a turn whose reply never left (the
//! operating system may write the object's pages before the index's). So
//! opening an object's database gives its alarm an entry if the object has
//! none ([`ensure`](AlarmIndex::ensure)): such an alarm fires, at the
//! latest, when its object is next used.
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
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};

use rusqlite::config::DbConfig;
use rusqlite::types::Value;
use rusqlite::{Connection, params};
use tokio::sync::Notify;

use super::durability::Durability;
use super::group_commit::GroupCommit;
use super::now_millis;
use super::wal;
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

/// Batches written between two checkpoints of the index's WAL
/// (`Durability::Full`; see [`AlarmIndex::sync_through`]).
pub(crate) const CHECKPOINT_BATCHES: u64 = 256;

/// How far the index is durable (`Durability::Full`).
#[derive(Default)]
struct Synced {
    /// Batches written and synced.
    batches: u64,
    /// `batches` at the last checkpoint.
    checkpointed: u64,
}

/// The node-level index of alarms.
pub(crate) struct AlarmIndex {
    conn: Mutex<Connection>,
    writes: GroupCommit<Change>,
    /// The index's WAL, which the output gate syncs (`Durability::Full`,
    /// on disk); none otherwise.
    wal: Option<PathBuf>,
    /// How far the WAL is synced; held during a sync, so that concurrent
    /// syncers share one.
    synced: Mutex<Synced>,
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
        // With `Full`, the output gate syncs and checkpoints (see the
        // module docs); a WAL that grew past 1 MiB is cut back to it.
        let wal = (durability == Durability::Full)
            .then(|| data_dir.map(|dir| dir.join("alarms.sqlite-wal")))
            .flatten();
        let checkpoints = if wal.is_some() { "PRAGMA wal_autocheckpoint = 0;" } else { "" };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; {checkpoints}
             PRAGMA journal_size_limit = 1048576;
             CREATE TABLE IF NOT EXISTS alarms (
                 type TEXT NOT NULL, id BLOB NOT NULL, at INTEGER NOT NULL, retries INTEGER NOT NULL,
                 PRIMARY KEY (type, id, at, retries)) WITHOUT ROWID;
             DROP INDEX IF EXISTS alarms_by_time;
             CREATE INDEX IF NOT EXISTS alarms_by_type_and_time ON alarms (type, at);"
        ))
        .map_err(|e| index_error(&what, e))?;
        if wal.is_some() {
            // Nor does closing: the thread that drops the runtime would sync
            // (what is unsynced then needs no sync: see `sync_through`).
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
                .map_err(|e| index_error(&what, e))?;
        }
        Ok(AlarmIndex {
            conn: Mutex::new(conn),
            writes: GroupCommit::new(),
            wal,
            synced: Mutex::new(Synced::default()),
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

    /// Adds an entry (idempotent); returns the batch that wrote it (see
    /// [`sync_through`](Self::sync_through)).
    pub(crate) fn schedule(&self, type_name: &str, id: &ObjectId, at: i64, retries: u32) -> Result<u64> {
        let due = AlarmDue { type_name: type_name.to_string(), id: *id, at, retries };
        let batch = self.write(vec![Change::Add(due)])?;
        self.changed.notify_one();
        Ok(batch)
    }

    /// Whether the output gate must sync the index before an object's
    /// commit that set an alarm (`Durability::Full`, on disk).
    pub(crate) fn synced_by_gate(&self) -> bool {
        self.wal.is_some()
    }

    /// Makes every batch up to `batch` durable: one `fdatasync` of the WAL
    /// covers every batch written before it began, so concurrent callers
    /// share it. Every [`CHECKPOINT_BATCHES`] batches it also checkpoints
    /// the WAL and starts it over (which syncs the database file and the
    /// WAL's new header), holding off writers meanwhile. Blocks on the
    /// disk: the output gate calls it on a sync thread.
    ///
    /// Batches that no commit waits for (an alarm delivered and removed, a
    /// retry) are synced with the next that one does, or never: losing
    /// them delivers an alarm again, which is allowed (at least once).
    pub(crate) fn sync_through(&self, batch: u64) -> std::io::Result<()> {
        let Some(wal) = &self.wal else { return Ok(()) };
        let mut synced = lock(&self.synced);
        if synced.batches >= batch {
            return Ok(());
        }
        let written = self.writes.written();
        File::open(wal)?.sync_data()?;
        synced.batches = written;
        if written - synced.checkpointed >= CHECKPOINT_BATCHES {
            checkpoint(&self.conn()).map_err(std::io::Error::other)?;
            synced.checkpointed = written;
        }
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

    fn write(&self, changes: Vec<Change>) -> Result<u64> {
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

/// Checkpoints the index (`synchronous = NORMAL`: SQLite syncs the WAL
/// first and the database file after) and starts its WAL over
/// ([`wal::start_over`]), so that no writer does that later.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
    wal::start_over(conn)
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
    fn no_write_syncs_the_index() {
        let dir = tempfile::tempdir().unwrap();
        for durability in [Durability::Normal, Durability::Full] {
            let index = AlarmIndex::open(Some(dir.path()), durability).unwrap();
            let synchronous: i64 =
                index.conn().query_row("PRAGMA synchronous", [], |row| row.get(0)).unwrap();
            assert_eq!(synchronous, 1, "synchronous = NORMAL: WAL commits are not synced");
            assert_eq!(index.synced_by_gate(), durability == Durability::Full);
        }
    }

    /// With `Full`, the gate's syncs checkpoint the index, and no writer
    /// does: the WAL grows past SQLite's own checkpoint interval (1,000
    /// pages) until a sync, and starts over after.
    #[test]
    fn the_gate_s_syncs_checkpoint_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let index = AlarmIndex::open(Some(dir.path()), Durability::Full).unwrap();
        let wal_len = || std::fs::metadata(dir.path().join("alarms.sqlite-wal")).unwrap().len();
        let writes = 3 * CHECKPOINT_BATCHES;
        let mut last = 0;
        for n in 0..writes {
            last = index.schedule("T", &id(1), i64::try_from(n).unwrap(), 0).unwrap();
        }
        assert_eq!(last, writes, "one batch per write, written one after another");
        // Each write adds a page to the table and one to its index.
        assert!(wal_len() > 1200 * 4096, "no writer checkpointed: the WAL is {} bytes", wal_len());
        index.sync_through(last).unwrap();
        assert!(wal_len() <= 1 << 20, "the sync checkpointed and cut the WAL back: {} bytes", wal_len());
        let (busy, frames): (i64, i64) = index
            .conn()
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap();
        assert_eq!((busy, frames), (0, 1), "the WAL started over with one page");
        assert_eq!(index.entries_of("T", &id(1)).unwrap().len(), writes as usize);
        // Synced already: nothing to do.
        index.sync_through(last).unwrap();
    }
}
