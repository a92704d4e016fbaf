//! One object's SQLite database: where it lives, how it is opened, its schema.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use super::durability::Durability;
use super::replica::{self, ObjectLog, Replica};
use super::wal::{self, KEPT_WAL_BYTES, NORMAL_OPEN_WAL_BYTES};
use super::wal_buffer;
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::sync::lock;

/// Marks a file as a stead object database (`PRAGMA application_id`): "stDO".
pub(super) const APPLICATION_ID: i32 = 0x7374_444f;

/// The reserved tables; user tables must not start with `_stead_`.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS _stead_kv (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS _stead_meta (name TEXT PRIMARY KEY NOT NULL, value ANY) WITHOUT ROWID;
";

/// Where the databases of a runtime live.
pub(crate) enum Location {
    /// One file per object under this directory.
    Files(PathBuf),
    /// In memory. Connections are parked here while their object is not in
    /// memory, so that data survives eviction (but not the runtime).
    Memory(Mutex<HashMap<(&'static str, ObjectId), Connection>>),
}

impl Location {
    /// The file of object `id` of type `type_name`, in a directory sharded by
    /// the id's first byte so that no directory grows too large:
    /// `objects/<type>/<2 hex digits>/<64 hex digits>.sqlite`.
    pub(crate) fn path(root: &Path, type_name: &str, id: &ObjectId) -> PathBuf {
        let hex = id.to_string();
        root.join("objects").join(type_name).join(&hex[..2]).join(format!("{hex}.sqlite"))
    }

    /// Opens (creating if needed) the database of an object.
    pub(crate) fn open(
        &self,
        type_name: &'static str,
        id: &ObjectId,
        durability: Durability,
    ) -> Result<Opened> {
        match self {
            Location::Files(root) => {
                open_file(&Location::path(root, type_name, id), durability, |path, flags| {
                    Connection::open_with_flags(path, flags)
                })
            }
            Location::Memory(parked) => {
                let parked = lock(parked).remove(&(type_name, *id));
                let conn = match parked {
                    Some(conn) => conn,
                    None => {
                        let conn = Connection::open_in_memory()
                            .map_err(|e| storage_error("open an in-memory database", e))?;
                        init(&conn, "an in-memory database")?;
                        conn
                    }
                };
                Ok(Opened { conn, wal: None, page_size: 0, new_paths: Vec::new(), replica: None })
            }
        }
    }

    /// Opens the database of an object as a copy of its log (see
    /// `replica.rs`): rebuilt from the log unless the local copy matches
    /// it. In memory there is nothing to replicate: it opens as usual.
    pub(crate) fn open_replicated(
        &self,
        log: &Arc<dyn ObjectLog>,
        type_name: &'static str,
        id: &ObjectId,
    ) -> Result<Opened> {
        let Location::Files(root) = self else { return self.open(type_name, id, Durability::Normal) };
        let path = Location::path(root, type_name, id);
        // The log is what is durable: the local files are never synced, not
        // even by SQLite's checkpoints (see `replica.rs`).
        let (conn, replica) = Replica::open(log.clone(), type_name, id, &path, |path| {
            let conn = open_file(path, Durability::Normal, wal_buffer::open)?.conn;
            conn.execute_batch(&format!(
                "PRAGMA synchronous = OFF; PRAGMA journal_size_limit = {}",
                replica::KEPT_WAL_BYTES
            ))
            .map_err(|e| storage_error(&format!("configure the database {}", path.display()), e))?;
            Ok(conn)
        })?;
        Ok(Opened { conn, wal: None, page_size: 0, new_paths: Vec::new(), replica: Some(replica) })
    }

    /// Closes the database of an object (parks it, in memory). `written`:
    /// commits reached the WAL since its last checkpoint. A `replicated`
    /// one is not checkpointed: its WAL stays the same bytes as its log.
    ///
    /// Blocks on syncs: the runtime calls it on a sync thread when it has
    /// them (see `upkeep.rs`).
    pub(crate) fn close(
        &self,
        type_name: &'static str,
        id: &ObjectId,
        conn: Connection,
        written: bool,
        replicated: bool,
    ) {
        match self {
            Location::Files(_) if replicated => drop(conn),
            Location::Files(root) => {
                // Move the WAL's pages into the database and start the WAL
                // over, keeping its file at its size (see `wal.rs`): the
                // next open then creates no file and reads back one page,
                // and commits overwrite the file instead of growing it. A
                // WAL nothing was written to since is left as it is. (A
                // failed checkpoint loses nothing: the WAL is read back on
                // the next open.)
                // (With `Normal` a WAL may be longer than that while open,
                // even with nothing written since its last checkpoint.)
                let long = || {
                    let wal = with_suffix(&Location::path(root, type_name, id), "-wal");
                    std::fs::metadata(wal).is_ok_and(|meta| meta.len() > KEPT_WAL_BYTES as u64)
                };
                let cut_back = format!("PRAGMA journal_size_limit = {KEPT_WAL_BYTES}");
                if (written || long())
                    && let Err(err) = conn.execute_batch(&cut_back).and_then(|()| wal::checkpoint(&conn))
                {
                    tracing::debug!(%err, "could not checkpoint a database being closed");
                }
                drop(conn);
            }
            Location::Memory(parked) => {
                lock(parked).insert((type_name, *id), conn);
            }
        }
    }

    /// Removes the database of an object whose storage is empty.
    pub(crate) fn remove(&self, type_name: &'static str, id: &ObjectId) {
        match self {
            Location::Files(root) => {
                let path = Location::path(root, type_name, id);
                for suffix in ["", "-wal", "-shm"] {
                    // Missing files are fine: the goal is that none is left.
                    let _ = std::fs::remove_file(with_suffix(&path, suffix));
                }
            }
            Location::Memory(parked) => {
                lock(parked).remove(&(type_name, *id));
            }
        }
    }
}

/// An object's database, just opened.
pub(crate) struct Opened {
    pub(crate) conn: Connection,
    /// The WAL file of a database on disk, to sync it (see `flush.rs`):
    /// after every commit with `Durability::Full`, after the first commit
    /// of a new database with `Normal`; and with `Full` to write zeros
    /// ahead of its commits (`wal::make_room`).
    pub(crate) wal: Option<Arc<File>>,
    /// The size of the database's pages, in bytes, when its WAL is the
    /// runtime's to checkpoint (see `wal.rs`); 0 otherwise.
    pub(crate) page_size: u32,
    /// A new database file (created without a sync, see `wal.rs`) and the
    /// directories whose entries changed (a file or directory was created
    /// in them), to sync with the first commit so that a power loss cannot
    /// take back the new database, or leave it torn.
    pub(crate) new_paths: Vec<PathBuf>,
    /// The object's place in its log, when its storage is replicated.
    pub(crate) replica: Option<Arc<Replica>>,
}

/// The page size of a new object database: 1 KiB, a quarter of SQLite's
/// default. A small write changes one leaf page, and every page a commit
/// changes is written to the WAL (synced with `Full`, copied again and
/// synced by each checkpoint with `Normal`), or shipped to PostgreSQL when
/// the storage is replicated: a quarter of the bytes for the disk, the log
/// and the syncs. Measured with 64 callers on 100 objects
/// (`durable_throughput`): `Normal` went from 16.1 to 8.0 µs a turn, with
/// its p99 from 42 to 22 ms, `Full` from 71 to 63 µs; `replicated_throughput`
/// went from 2.1x to 1.1x the time of its PostgreSQL baseline (1 KiB pages
/// also stay below PostgreSQL's TOAST threshold). Large values span more
/// pages, which costs little. A database made with another page size keeps
/// it.
const PAGE_SIZE: u32 = 1024;

/// Opens the database file at `path` with `open` (SQLite's default VFS, or
/// a replicated database's: `wal_buffer.rs`); a new one gets [`PAGE_SIZE`].
fn open_file(
    path: &Path,
    durability: Durability,
    open: fn(&Path, OpenFlags) -> rusqlite::Result<Connection>,
) -> Result<Opened> {
    let what = format!("the database {}", path.display());
    // A new file, the directories about to be made and the one of the new
    // file are synced with the first commit, on a sync thread, before its
    // reply (with either durability). A file of no bytes is new to SQLite
    // too.
    let new = std::fs::metadata(path).map_or(true, |meta| meta.len() == 0);
    let mut new_paths = Vec::new();
    if new {
        new_paths.push(path.to_path_buf());
    }
    if let Some(dir) = path.parent() {
        let mut missing = dir;
        while !missing.exists() {
            let Some(parent) = missing.parent() else { break };
            new_paths.push(parent.to_path_buf());
            missing = parent;
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
        if new {
            new_paths.push(dir.to_path_buf());
        }
    }
    let flags =
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = open(path, flags).map_err(|e| storage_error(&format!("open {what}"), e))?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(|e| storage_error(&format!("configure {what}"), e))?;
    // Exclusive locking before the first access, so that WAL mode keeps its
    // index in memory (no `-shm` file) and transactions take no file locks
    // (see the module docs of `storage`). `synchronous = OFF` until the
    // schema of a new file is in, so that SQLite does not sync its switch to
    // WAL, nor the new WAL (the first commit's sync covers them). With `Full` SQLite never syncs (`OFF`): the
    // runtime syncs commits and runs checkpoints on its sync threads,
    // before it releases a reply (see `wal.rs`). With `Normal` it syncs
    // only in checkpoints (`NORMAL`), which run on sync threads too
    // (`upkeep.rs`).
    let synchronous = match durability {
        Durability::Full => "OFF",
        Durability::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA locking_mode = EXCLUSIVE; PRAGMA page_size = {PAGE_SIZE}; PRAGMA synchronous = OFF; PRAGMA journal_mode = WAL;
         PRAGMA journal_size_limit = {KEPT_WAL_BYTES};"
    ))
    .map_err(|e| storage_error(&format!("open {what} (is it an SQLite database?)"), e))?;
    // Checkpoints are the runtime's (see `wal.rs`); closing does its own
    // (see `Location::close`) and keeps the WAL file instead of deleting it.
    conn.wal_hook(Some(wal::count_frames));
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(|e| storage_error(&format!("configure {what}"), e))?;
    init(&conn, &what)?;
    let kept = match durability {
        Durability::Full => KEPT_WAL_BYTES,
        Durability::Normal => NORMAL_OPEN_WAL_BYTES,
    };
    conn.execute_batch(&format!("PRAGMA synchronous = {synchronous}; PRAGMA journal_size_limit = {kept}"))
        .map_err(|e| storage_error(&format!("configure {what}"), e))?;
    let page_size = conn
        .query_row("PRAGMA page_size", [], |row| row.get(0))
        .map_err(|e| storage_error(&format!("read the page size of {what}"), e))?;
    let wal = Some(Arc::new(open_wal(path)?));
    Ok(Opened { conn, wal, page_size, new_paths, replica: None })
}

/// The file SQLite keeps beside the database at `path` under `suffix`
/// (`-wal`, `-shm`; `""`: the database itself).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut file = path.as_os_str().to_owned();
    file.push(suffix);
    PathBuf::from(file)
}

/// A handle on the WAL of the database at `path`, to sync it (and write it
/// ahead, see `wal::make_room`). SQLite has it open already (the database
/// was read in WAL mode, exclusively), and keeps it for as long as the
/// connection lives (it is never deleted while open; see
/// `Location::close`).
fn open_wal(path: &Path) -> Result<File> {
    let wal = with_suffix(path, "-wal");
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&wal)
        .map_err(|e| Error::Storage(format!("cannot open {} to sync it: {e}", wal.display())))
}

/// Checks that the database is ours, or new; a new one gets its marker and
/// the reserved tables in one transaction.
fn init(conn: &Connection, what: &str) -> Result<()> {
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |row| row.get(0))
        .map_err(|e| storage_error(&format!("read {what} (is it an SQLite database?)"), e))?;
    if app_id != APPLICATION_ID {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
            .map_err(|e| storage_error(&format!("read {what}"), e))?;
        if app_id != 0 || tables != 0 {
            return Err(Error::Storage(format!(
                "{what} is not a stead object database (application id {app_id:#x}, {tables} schema \
                 entries); move the foreign file out of the data directory"
            )));
        }
        conn.execute_batch(&format!("BEGIN; PRAGMA application_id = {APPLICATION_ID}; {SCHEMA} COMMIT;"))
            .map_err(|e| storage_error(&format!("initialise {what}"), e))?;
    }
    Ok(())
}

/// Begins a transaction. The statement is prepared once per connection (a
/// turn's storage costs one `BEGIN` and one `COMMIT`: parsing them every
/// time would be a good part of a small turn's cost).
pub(crate) fn begin(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached("BEGIN")?.execute([]).map(drop)
}

/// Commits the open transaction (prepared once per connection, like `begin`).
pub(crate) fn commit(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached("COMMIT")?.execute([]).map(drop)
}

/// A storage error with what was being done.
pub(crate) fn storage_error(doing: &str, err: rusqlite::Error) -> Error {
    Error::Storage(format!("could not {doing}: {err}"))
}
