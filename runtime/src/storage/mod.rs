//! Each object's durable storage: a key-value API and SQL, in one SQLite
//! database per object.
//!
//! # The output gate
//! Every turn runs in one implicit transaction, opened at the turn's first
//! storage access and committed *before* the turn's reply is released. So a
//! caller that has a reply knows the writes of that turn are committed, and a
//! turn that panics leaves no writes behind: its transaction is rolled back.
//! With [`Durability::Full`] "committed" means
//! fsynced; with `Normal`, written to the OS (survives a process crash, not a
//! power loss).
//!
//! Storage is reachable only from the object's own turns (see `turn.rs`):
//! an access from a task or thread the object spawned, or from its `Drop`,
//! fails with [`Error::Storage`] instead of slipping into, or beside, the
//! turn that happens to run. A spawned task calls its object through a stub.
//!
//! # Layout
//! `data_dir/objects/<type>/<first 2 hex digits of id>/<id>.sqlite`, in WAL
//! mode. Key-value pairs live in the reserved table `_stead_kv`; the alarm
//! and the object's name (for an id made with `id_from_name`) in
//! `_stead_meta`; the user's own tables sit beside them (names starting with
//! `_stead_` are reserved). The database is opened on the first access and
//! closed when the object is evicted, or earlier when too many are open.
//!
//! An open database is locked exclusively (`locking_mode = EXCLUSIVE`): only
//! one process may have an object active, so no other process needs to see
//! its writes while it is, and the lock refuses a second one that tries (two
//! nodes sharing a data directory by mistake). It also spares every
//! transaction its file-lock system calls and the shared-memory file. On
//! close the WAL is checkpointed and started over but kept at its size, so
//! that activating the object again creates no file and its commits
//! overwrite the WAL instead of growing it (see `wal.rs`).
//!
//! # No sync on a turn's thread
//! Every sync of an object's database runs on a sync thread
//! (`sync_threads.rs`), never on the thread that runs a turn. With
//! [`Durability::Full`]: the syncs of commits (`flush.rs`), of a new
//! database file (with its first commit), of checkpoints and of closes
//! (`upkeep.rs`, where the connection is handed to a sync thread between
//! turns); SQLite runs with `synchronous = OFF` outside those checkpoints,
//! and `wal.rs` says why that keeps every acknowledged write safe from a
//! power loss. With `Normal` commits are not synced, but a new database
//! is, with its first commit (whose reply waits for it), and so are
//! checkpoints and closes: on the sync threads, the same way.

mod alarm_index;
mod database;
mod durability;
mod flush;
mod group_commit;
mod listing;
mod pool;
mod replica;
mod sync_threads;
mod turn;
mod upkeep;
mod wal;
mod wal_buffer;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use stead_transport::codec;

use crate::error::{Error, Result};
use crate::id::ObjectId;
pub(crate) use alarm_index::{AlarmDue, AlarmIndex};
pub(crate) use database::Location;
use database::storage_error;
pub use durability::Durability;
use flush::{Flush, Shipment};
pub(crate) use pool::OpenDatabases;
use pool::{Closable, CloseAttempt};
use replica::Replica;
pub(crate) use replica::Statement;
pub(crate) use replica::{Appended, Entry, Fetched, Head, ObjectLog, before_blocking, on_block};
pub(crate) use sync_threads::SyncThreads;
use upkeep::{Closing, Gate};

/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 2048;

/// Everything the storage of one runtime shares.
pub(crate) struct StorageRoot {
    pub(crate) location: Location,
    pub(crate) durability: Durability,
    pub(crate) open: OpenDatabases,
    pub(crate) alarms: Arc<AlarmIndex>,
    /// The threads that sync commits before their replies leave, when the
    /// runtime syncs them (`Durability::Full` on disk, or replicated; see
    /// `flush.rs`).
    pub(crate) sync: Option<SyncThreads>,
    /// The same threads, for checkpoints and closes, whenever databases
    /// are files (with either durability; see `upkeep.rs`).
    pub(crate) upkeep: Option<SyncThreads>,
    /// The log that objects' databases are copies of, when storage is
    /// replicated (a PostgreSQL cluster with a data directory; see
    /// `replica.rs`). The sync threads then ship commits to it.
    pub(crate) log: Option<Arc<dyn ObjectLog>>,
}

/// Which keys [`Storage::list`] returns, in which order.
///
/// Build it with the methods (`ListOptions::default().prefix("user:").limit(10)`)
/// or with a struct literal (`ListOptions { prefix: Some("user:".into()), ..Default::default() }`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Only keys that start with this.
    pub prefix: Option<String>,
    /// Only keys at or after this one.
    pub start: Option<String>,
    /// Only keys before this one (exclusive).
    pub end: Option<String>,
    /// Descending key order instead of ascending.
    pub reverse: bool,
    /// At most this many pairs.
    pub limit: Option<usize>,
}

impl ListOptions {
    /// Only keys that start with `prefix`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Only keys at or after `start` (inclusive).
    pub fn start(mut self, start: impl Into<String>) -> Self {
        self.start = Some(start.into());
        self
    }

    /// Only keys before `end` (exclusive).
    pub fn end(mut self, end: impl Into<String>) -> Self {
        self.end = Some(end.into());
        self
    }

    /// Descending order when `true`.
    pub fn reverse(mut self, reverse: bool) -> Self {
        self.reverse = reverse;
        self
    }

    /// At most `limit` pairs.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// The durable storage of one object. Get it with
/// [`Context::storage`](crate::Context::storage).
///
/// Synchronous on purpose: the database is local, and a synchronous API
/// cannot be interleaved with other turns. Values are any `serde` type,
/// encoded with stead's codec; keys are strings of at most
/// [`MAX_KEY_LEN`] bytes, ordered byte-wise.
///
/// Every write of a turn is committed when the turn ends, before its reply
/// is released, and rolled back if the turn panics (see the module docs).
///
/// # Errors
/// Every method fails with [`Error::Storage`] when it is not called from a
/// turn of its object (its constructor, a method, its alarm handler): from
/// a task or thread the object spawned, or from its `Drop`. Such a task
/// calls the object through its stub instead.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<StorageInner>,
}

struct StorageInner {
    type_name: &'static str,
    id: ObjectId,
    has_alarm: bool,
    root: Arc<StorageRoot>,
    state: Mutex<State>,
    /// The syncs of the database, and the replies waiting for them.
    flush: Arc<Flush>,
    /// Whether the connection is on a sync thread (see `upkeep.rs`).
    gate: Arc<Gate>,
}

#[derive(Default)]
struct State {
    conn: Option<Connection>,
    /// The open database's WAL, when the runtime syncs it.
    wal: Option<Arc<File>>,
    /// The open database's place in its log, when storage is replicated.
    replica: Option<Arc<Replica>>,
    /// Statements the turn queued for PostgreSQL (`Postgres::execute`).
    statements: Vec<Statement>,
    /// The alarm as the turn left it, if it changed it (`Some(None)`:
    /// deleted): shipped with the turn when storage is replicated.
    alarm: Option<Option<i64>>,
    /// Files and directories to sync with the next commit (see
    /// `Opened::new_paths`).
    new_paths: Vec<PathBuf>,
    /// The alarm index's batch that holds the entry of an alarm the turn
    /// set (0: none): synced before the turn's commit (see
    /// `alarm_index.rs`).
    index_batch: u64,
    /// Pages in the WAL after the last commit that wrote any since the
    /// database was opened or checkpointed (from the WAL hook, see
    /// `wal.rs`); 0 if none.
    wal_frames: u32,
    /// The size of the open database's pages (`Opened::page_size`).
    page_size: u32,
    /// The WAL file's length as last seen (`wal::make_room`); `None` when
    /// not known (the database was opened or checkpointed since).
    wal_len: Option<u64>,
    /// `total_changes` of the connection when the turn's transaction began.
    changes: u64,
    /// The turn used `sql` or `delete_all`: its writes are not all counted
    /// by `total_changes` (schema changes).
    unknown_writes: bool,
    /// A turn is running: accesses join the turn's transaction.
    turn: bool,
    /// The turn's transaction has begun.
    txn: bool,
    /// The connection is lent to an `sql` closure.
    lent: bool,
    /// The object left memory: this handle is dead.
    evicted: bool,
    /// Open savepoints of `transaction`.
    savepoints: u32,
    /// `delete_all` ran: remove the file on close if it stayed empty.
    maybe_empty: bool,
    /// Bytes of keys and values the turn wrote with `put` and `put_many`
    /// (for the `stead.commit` span).
    written: u64,
}

impl Storage {
    pub(crate) fn new(
        root: Arc<StorageRoot>,
        type_name: &'static str,
        id: ObjectId,
        has_alarm: bool,
    ) -> Self {
        Storage {
            inner: Arc::new(StorageInner {
                type_name,
                id,
                has_alarm,
                root,
                state: Mutex::new(State::default()),
                flush: Flush::new(),
                gate: Arc::default(),
            }),
        }
    }

    /// The value stored under `key`, if any.
    ///
    /// # Errors
    /// `Storage` when the database fails, `Codec` when the stored value is not
    /// a `V`.
    pub fn get<V: DeserializeOwned>(&self, key: &str) -> Result<Option<V>> {
        check_key(key)?;
        let bytes: Option<Vec<u8>> = self.with_conn("read a key", |conn| {
            conn.prepare_cached("SELECT value FROM _stead_kv WHERE key = ?1")?
                .query_row([key], |row| row.get(0))
                .optional()
        })?;
        bytes.map(|bytes| decode_value(key, &bytes)).transpose()
    }

    /// Stores `value` under `key`, replacing what was there.
    pub fn put<V: Serialize + ?Sized>(&self, key: &str, value: &V) -> Result<()> {
        check_key(key)?;
        let bytes = codec::encode(value)?;
        self.with_conn("write a key", |conn| {
            conn.prepare_cached("INSERT OR REPLACE INTO _stead_kv (key, value) VALUES (?1, ?2)")?
                .execute(params![key, bytes])
                .map(drop)
        })?;
        self.wrote(key.len() + bytes.len());
        Ok(())
    }

    /// Deletes `key`; returns whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool> {
        check_key(key)?;
        self.with_conn("delete a key", |conn| {
            conn.prepare_cached("DELETE FROM _stead_kv WHERE key = ?1")?.execute([key]).map(|n| n > 0)
        })
    }

    /// The values of those of `keys` that exist.
    pub fn get_many<K, V>(&self, keys: impl IntoIterator<Item = K>) -> Result<BTreeMap<String, V>>
    where
        K: AsRef<str>,
        V: DeserializeOwned,
    {
        let keys: Vec<K> = keys.into_iter().collect();
        for key in &keys {
            check_key(key.as_ref())?;
        }
        let found: Vec<(String, Vec<u8>)> = self.with_conn("read keys", |conn| {
            let mut stmt = conn.prepare_cached("SELECT key, value FROM _stead_kv WHERE key = ?1")?;
            let mut found = Vec::new();
            for key in &keys {
                if let Some(pair) =
                    stmt.query_row([key.as_ref()], |row| Ok((row.get(0)?, row.get(1)?))).optional()?
                {
                    found.push(pair);
                }
            }
            Ok(found)
        })?;
        found.into_iter().map(|(key, bytes)| Ok((key.clone(), decode_value(&key, &bytes)?))).collect()
    }

    /// Stores every pair, atomically.
    pub fn put_many<K, V>(&self, entries: impl IntoIterator<Item = (K, V)>) -> Result<()>
    where
        K: AsRef<str>,
        V: Serialize,
    {
        let mut encoded = Vec::new();
        for (key, value) in entries {
            check_key(key.as_ref())?;
            encoded.push((key.as_ref().to_string(), codec::encode(&value)?));
        }
        self.with_conn("write keys", |conn| {
            let mut stmt =
                conn.prepare_cached("INSERT OR REPLACE INTO _stead_kv (key, value) VALUES (?1, ?2)")?;
            for (key, bytes) in &encoded {
                stmt.execute(params![key, bytes])?;
            }
            Ok(())
        })?;
        self.wrote(encoded.iter().map(|(key, bytes)| key.len() + bytes.len()).sum());
        Ok(())
    }

    /// Deletes every key given; returns how many existed.
    pub fn delete_many<K: AsRef<str>>(&self, keys: impl IntoIterator<Item = K>) -> Result<usize> {
        let keys: Vec<K> = keys.into_iter().collect();
        for key in &keys {
            check_key(key.as_ref())?;
        }
        self.with_conn("delete keys", |conn| {
            let mut stmt = conn.prepare_cached("DELETE FROM _stead_kv WHERE key = ?1")?;
            let mut deleted = 0;
            for key in &keys {
                deleted += stmt.execute([key.as_ref()])?;
            }
            Ok(deleted)
        })
    }

    /// The pairs selected by `options`, in key order.
    pub fn list<V: DeserializeOwned>(&self, options: ListOptions) -> Result<Vec<(String, V)>> {
        let order = if options.reverse { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT key, value FROM _stead_kv
             WHERE (?1 IS NULL OR key >= ?1) AND (?2 IS NULL OR key < ?2)
               AND (?3 IS NULL OR (key >= ?3 AND substr(key, 1, length(?3)) = ?3))
             ORDER BY key {order} LIMIT ?4"
        );
        let limit = options.limit.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let rows: Vec<(String, Vec<u8>)> = self.with_conn("list keys", |conn| {
            conn.prepare_cached(&sql)?
                .query_map(params![options.start, options.end, options.prefix, limit], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?
                .collect()
        })?;
        rows.into_iter().map(|(key, bytes)| Ok((key.clone(), decode_value(&key, &bytes)?))).collect()
    }

    /// Deletes every key and every table of the user; the alarm stays.
    ///
    /// The storage stays usable. Like every write it is part of the turn (a
    /// panic undoes it); once committed, the object's database file is
    /// removed when the object is evicted, if nothing was written since.
    pub fn delete_all(&self) -> Result<()> {
        self.with_conn("delete everything", |conn| {
            let tables: Vec<String> = conn
                .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_stead\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")?
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for table in tables {
                conn.execute_batch(&format!("DROP TABLE IF EXISTS \"{}\"", table.replace('"', "\"\"")))?;
            }
            conn.execute_batch("DELETE FROM _stead_kv")
        })?;
        let mut state = self.lock();
        state.maybe_empty = true;
        state.unknown_writes = true;
        Ok(())
    }

    /// Runs `f` in a savepoint: if `f` returns an error, just its writes are
    /// rolled back, and the error is returned; otherwise they join the turn.
    pub fn transaction<R, E>(
        &self,
        f: impl FnOnce(&Storage) -> std::result::Result<R, E>,
    ) -> std::result::Result<R, E>
    where
        E: From<Error>,
    {
        let depth = {
            let mut state = self.lock();
            let depth = state.savepoints;
            let conn = self.ready(&mut state)?;
            conn.execute_batch(&format!("SAVEPOINT stead_{depth}"))
                .map_err(|e| storage_error("open a savepoint", e))?;
            state.savepoints += 1;
            depth
        };
        let result = f(self);
        let mut state = self.lock();
        state.savepoints = state.savepoints.saturating_sub(1);
        let conn = self.ready(&mut state)?;
        let end = match &result {
            Ok(_) => format!("RELEASE stead_{depth}"),
            Err(_) => format!("ROLLBACK TO stead_{depth}; RELEASE stead_{depth}"),
        };
        conn.execute_batch(&end).map_err(|e| storage_error("close a savepoint", e))?;
        result
    }

    /// Runs `f` with the object's SQLite connection, for the user's own
    /// tables (rusqlite is re-exported as `stead::rusqlite`).
    ///
    /// Inside a turn, `f` runs in the turn's transaction: do not `COMMIT` or
    /// `ROLLBACK` (the output gate commits for you; use
    /// [`transaction`](Self::transaction) for a nested savepoint). Tables
    /// whose names start with `_stead_` are reserved.
    pub fn sql<R>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> Result<R> {
        let (conn, in_turn) = {
            let mut state = self.lock();
            self.ready(&mut state)?;
            state.lent = true;
            state.unknown_writes = true;
            (state.conn.take(), state.turn)
        };
        let Some(conn) = conn else {
            self.lock().lent = false;
            return Err(Error::Storage("the database was not open".into()));
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(&conn)));
        let ended_turn = in_turn && conn.is_autocommit();
        {
            let mut state = self.lock();
            state.conn = Some(conn);
            state.lent = false;
            if ended_turn {
                state.txn = false;
            }
        }
        let result = result.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        if ended_turn {
            return Err(Error::Storage(
                "the sql closure ended the turn's transaction with COMMIT or ROLLBACK; the turn \
                 commits by itself, use `Storage::transaction` for a nested savepoint"
                    .into(),
            ));
        }
        result.map_err(|e| storage_error("run the sql closure", e))
    }

    /// Sets the object's alarm to `at`, replacing any other; the type's
    /// `#[alarm]` handler runs then (at least once). A time in the past fires
    /// at once.
    ///
    /// # Errors
    /// `Config` when the type has no `#[alarm]` handler.
    pub fn set_alarm(&self, at: SystemTime) -> Result<()> {
        if !self.inner.has_alarm {
            return Err(Error::Config(format!(
                "`{0}` has no alarm handler, so its alarm would never run; add \
                 `#[alarm] async fn alarm(&mut self, info: stead::AlarmInfo)` to the \
                 `#[durable_object] impl {0}` block",
                self.inner.type_name
            )));
        }
        let at = unix_millis(at);
        // Refused outside a turn before anything is indexed.
        self.check_access(&self.lock())?;
        // The node's index first: if the turn then commits, the alarm is
        // found after a crash; if it rolls back, the index entry is checked
        // against this storage when it fires, and dropped.
        let batch = self.inner.root.alarms.schedule(self.inner.type_name, &self.inner.id, at, 0)?;
        self.with_conn("set the alarm", |conn| {
            conn.prepare_cached("INSERT OR REPLACE INTO _stead_meta (name, value) VALUES ('alarm', ?1)")?
                .execute([at])
                .map(drop)
        })?;
        let mut state = self.lock();
        state.alarm = Some(Some(at));
        // With `Full`, the output gate syncs the entry before the commit.
        state.index_batch = state.index_batch.max(batch);
        Ok(())
    }

    /// When the object's alarm is set to fire, if it is.
    pub fn get_alarm(&self) -> Result<Option<SystemTime>> {
        Ok(self.alarm_millis()?.map(from_unix_millis))
    }

    /// Cancels the object's alarm, if any.
    pub fn delete_alarm(&self) -> Result<()> {
        self.with_conn("delete the alarm", |conn| {
            conn.prepare_cached("DELETE FROM _stead_meta WHERE name = 'alarm'")?.execute([]).map(drop)
        })?;
        self.lock().alarm = Some(None);
        Ok(())
    }

    /// Stores the object's name, unless it has one (in the turn that
    /// constructs it: the name is written with the turn's writes).
    pub(crate) fn record_name(&self, name: &str) -> Result<()> {
        self.with_conn("store the object's name", |conn| {
            conn.prepare_cached("INSERT OR IGNORE INTO _stead_meta (name, value) VALUES ('name', ?1)")?
                .execute([name])
                .map(drop)
        })
    }

    /// Steps the clock by which this runtime's alarms come due by `millis`
    /// (negative: backwards), as an operator or NTP may step a node's clock.
    /// For tests of the runtime only: not a stable API.
    #[doc(hidden)]
    pub fn step_alarm_clock_for_tests(&self, millis: i64) {
        self.inner.root.alarms.step_clock(millis);
    }

    pub(crate) fn alarm_millis(&self) -> Result<Option<i64>> {
        self.with_conn("read the alarm", |conn| {
            conn.prepare_cached("SELECT value FROM _stead_meta WHERE name = 'alarm'")?
                .query_row([], |row| row.get(0))
                .optional()
        })
    }

    /// Closes the database (parks it, in memory); the next access opens it
    /// again. Returns once the file is closed: eviction closes it before
    /// the object may run another turn, or another activation open it.
    /// Blocks on the close (see `upkeep.rs`): not for a turn's thread.
    pub(crate) fn close(&self) {
        self.start_close();
        self.inner.gate.wait();
    }

    /// Starts closing the database; the object's next turn waits for the
    /// close without blocking its thread (`Storage::upkeep`).
    pub(crate) fn start_close(&self) {
        let mut state = self.lock();
        self.inner.close_conn(&mut state);
    }

    /// The object left memory: this handle is dead from now on, and its
    /// database closed. Returns once the file is closed (another activation
    /// of the object may open it next).
    pub(crate) fn retire(&self) {
        let mut state = self.lock();
        state.evicted = true;
        self.inner.close_conn(&mut state);
        drop(state);
        self.inner.gate.wait();
    }

    /// The state, once the connection is not away on a sync thread: the
    /// turns wait for that before they begin (see `upkeep.rs`); anything
    /// else that comes meanwhile blocks here until it is back.
    fn lock(&self) -> MutexGuard<'_, State> {
        loop {
            let state = self.inner.lock();
            // The gate leaves only under this lock: checked here, it stays.
            if !self.inner.gate.is_away() {
                return state;
            }
            drop(state);
            self.inner.gate.wait();
        }
    }

    /// The open connection, inside the turn's transaction when in a turn.
    fn ready<'a>(&self, state: &'a mut State) -> Result<&'a Connection> {
        self.check_access(state)?;
        if state.lent {
            return Err(Error::Storage(
                "the storage is in use by an `sql` closure; use the connection it was given".into(),
            ));
        }
        if state.conn.is_none() {
            let root = &self.inner.root;
            let (type_name, id) = (self.inner.type_name, &self.inner.id);
            let opened = match &root.log {
                // The log's errors say which object and what to do.
                Some(log) => root.location.open_replicated(log, type_name, id)?,
                None => root
                    .location
                    .open(type_name, id, root.durability)
                    .map_err(|err| Error::Storage(format!("`{type_name}` object {id}: {err}")))?,
            };
            state.conn = Some(opened.conn);
            state.wal = opened.wal;
            state.new_paths = opened.new_paths;
            state.wal_frames = 0;
            state.wal_len = None;
            state.page_size = opened.page_size;
            self.inner.gate.forget_sync_ahead();
            state.replica = opened.replica;
            root.open.opened(self.inner.clone());
            self.index_alarm_if_lost(state);
        }
        let conn = state.conn.as_ref().ok_or_else(|| Error::Storage("the database was not open".into()))?;
        if state.turn && !state.txn {
            database::begin(conn).map_err(|e| storage_error("begin the turn's transaction", e))?;
            state.changes = conn.total_changes();
            state.txn = true;
        }
        Ok(conn)
    }

    /// Gives the object's alarm an entry in the node's index if it has
    /// none: a power loss may have kept the commit that set the alarm but
    /// not the unsynced entry written before it (with `Full`, only for a
    /// turn whose reply never left; see `alarm_index.rs`). A replicated
    /// object may also have been restored from the log, its alarm set on
    /// another node.
    fn index_alarm_if_lost(&self, state: &State) {
        let root = &self.inner.root;
        if !self.inner.has_alarm {
            return;
        }
        let Some(conn) = state.conn.as_ref() else { return };
        let at = conn
            .prepare_cached("SELECT value FROM _stead_meta WHERE name = 'alarm'")
            .and_then(|mut stmt| stmt.query_row([], |row| row.get::<_, i64>(0)).optional());
        let indexed = match at {
            Ok(Some(at)) => root.alarms.ensure(self.inner.type_name, &self.inner.id, at),
            Ok(None) => Ok(()),
            Err(err) => Err(storage_error("read the alarm", err)),
        };
        if let Err(err) = indexed {
            // The object works on; its alarm may wait for a later activation.
            tracing::warn!(%err, r#type = self.inner.type_name, object = %self.inner.id, "could not check the object's alarm against the node's index");
        }
    }

    /// Runs `f` on the connection: in the turn's transaction, or in a
    /// transaction of its own (the runtime's reads after a turn ended).
    fn with_conn<R>(&self, doing: &str, f: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> Result<R> {
        let mut state = self.lock();
        let conn = self.ready(&mut state)?;
        if !conn.is_autocommit() {
            return f(conn).map_err(|e| storage_error(doing, e));
        }
        database::begin(conn).map_err(|e| storage_error(doing, e))?;
        match f(conn) {
            Ok(value) => {
                wal::take_frames();
                database::commit(conn).map_err(|e| storage_error(doing, e))?;
                let frames = wal::take_frames();
                match state.replica.clone() {
                    // Shipped with the next turn's commits.
                    Some(replica) => {
                        if let Some(end) = replica.wal_end(frames) {
                            self.inner.flush.committed_to_log(&replica, Some(end), Shipment::default());
                        }
                    }
                    None => self.note_frames(&mut state, frames),
                }
                Ok(value)
            }
            Err(err) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(storage_error(doing, err))
            }
        }
    }
}

impl StorageInner {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Closes the database: starts the close, on a sync thread if the
    /// runtime has them (see `upkeep.rs`). From now on the storage is
    /// closed: the next access opens the database again, once the close
    /// is done.
    fn close_conn(&self, state: &mut State) {
        if let Some(closing) = self.closing(state) {
            closing.start(&self.gate);
        }
    }

    /// Takes the open connection out of `state`, with what closing it needs.
    fn closing(&self, state: &mut State) -> Option<Closing> {
        let conn = state.conn.take()?;
        if state.txn {
            let _ = conn.execute_batch("ROLLBACK");
            state.txn = false;
        }
        state.wal = None;
        self.root.open.closed();
        Some(Closing {
            conn,
            root: self.root.clone(),
            flush: self.flush.clone(),
            type_name: self.type_name,
            id: self.id,
            new_paths: std::mem::take(&mut state.new_paths),
            maybe_empty: std::mem::take(&mut state.maybe_empty),
            written: std::mem::take(&mut state.wal_frames) > 0,
            replica: state.replica.take(),
        })
    }
}

impl Closable for StorageInner {
    fn type_name(&self) -> &'static str {
        self.type_name
    }

    fn try_close_idle(&self) -> CloseAttempt {
        let Ok(mut state) = self.state.try_lock() else { return CloseAttempt::Busy };
        if self.gate.is_away() {
            // Being checkpointed (then back soon) or closed.
            return CloseAttempt::Busy;
        }
        if state.conn.is_none() {
            return CloseAttempt::NotOpen;
        }
        if state.turn || state.lent || state.savepoints > 0 {
            return CloseAttempt::Busy;
        }
        self.close_conn(&mut state);
        CloseAttempt::Closed
    }
}

impl Drop for StorageInner {
    fn drop(&mut self) {
        let mut state = std::mem::take(self.state.get_mut().unwrap_or_else(|p| p.into_inner()));
        // Closed in place (the last handle may be dropped by a sync thread's
        // job, which must not wait for another job), or waited for: another
        // activation of the object may open the file next.
        match self.closing(&mut state) {
            Some(closing) => closing.run(),
            None => self.gate.wait(),
        }
    }
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage").field("type", &self.inner.type_name).field("id", &self.inner.id).finish()
    }
}

/// Whether a database holds no keys, no alarm and no user tables.
fn is_empty(conn: &Connection) -> bool {
    conn.query_row(
        "SELECT (SELECT count(*) FROM _stead_kv) + (SELECT count(*) FROM _stead_meta WHERE name != 'name')
              + (SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_stead\\_%' ESCAPE '\\')",
        [],
        |row| row.get::<_, i64>(0),
    )
    .map(|n| n == 0)
    .unwrap_or(false)
}

fn check_key(key: &str) -> Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::Storage(format!(
            "a key is at most {MAX_KEY_LEN} bytes, this one has {} (it starts with {:?}); store \
             long identifiers as values, or hash them into the key",
            key.len(),
            key.chars().take(32).collect::<String>()
        )));
    }
    Ok(())
}

fn decode_value<V: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<V> {
    codec::decode(bytes).map_err(|e| Error::Codec(format!("the value under key {key:?}: {e}")))
}

pub(crate) fn unix_millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Milliseconds since the epoch, now (the system clock).
fn now_millis() -> i64 {
    unix_millis(SystemTime::now())
}

pub(crate) fn from_unix_millis(millis: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}
