//! One object's database, opened read-only.
//!
//! The runtime keeps an object's database locked exclusively while the
//! object is in memory (`locking_mode = EXCLUSIVE`), so reading it then
//! fails with SQLite's "database is locked": that is reported as an active
//! object, with what to do. A database whose object was evicted, or whose
//! node stopped or crashed, opens normally, WAL included.
//!
//! The connection is opened read-only (`SQLITE_OPEN_READ_ONLY`), cannot
//! attach other databases, and `query` refuses statements that SQLite does
//! not call read-only: nothing here can change an object's storage. (SQLite
//! itself creates an empty `-wal` file where none was, as nodes keep one.)
//!
//! The other way round, while a database is open here, a node that
//! activates its object waits for it (up to its 5 s busy timeout): reads
//! take milliseconds, but a long `--sql` query can make that activation fail.

use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::limits::Limit;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension};

use crate::data_dir::companion;
use crate::error::{Error, Result};
use crate::format::one_line;

/// Marks a file as a stead object database (`PRAGMA application_id`):
/// "stDO", as the runtime writes it.
const APPLICATION_ID: i32 = 0x7374_444f;

/// An object database open for reading.
pub(crate) struct ObjectDb {
    conn: Connection,
    path: PathBuf,
    type_name: String,
    id: String,
    // Declared after `conn`, so that it runs once the connection is closed.
    _shm: ShmCleanup,
}

impl ObjectDb {
    /// Opens the database of object `id` of `type_name` at `path`, and checks
    /// that it is ours and that no node has the object in memory.
    pub(crate) fn open(path: &Path, type_name: &str, id: &str) -> Result<ObjectDb> {
        let shm = ShmCleanup::before_open(path);
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|source| Error::Sqlite {
            doing: "open",
            path: path.to_path_buf(),
            source,
        })?;
        let db = ObjectDb {
            conn,
            path: path.to_path_buf(),
            type_name: type_name.to_string(),
            id: id.to_string(),
            _shm: shm,
        };
        db.conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0).map_err(|e| db.error("configure", e))?;
        // The first read of the file: where a lock or a foreign file shows.
        let app_id: i32 = db
            .conn
            .query_row("PRAGMA application_id", [], |row| row.get(0))
            .map_err(|e| db.error("read", e))?;
        if app_id != APPLICATION_ID {
            return Err(Error::Foreign {
                path: db.path.clone(),
                what: format!("its application id is {app_id:#x}, not {APPLICATION_ID:#x}"),
            });
        }
        Ok(db)
    }

    /// The name of an object made with `id_from_name`, when the runtime
    /// stored it.
    pub(crate) fn name(&self) -> Result<Option<String>> {
        Ok(match self.meta("name")? {
            Some(Value::Text(name)) => Some(name),
            _ => None,
        })
    }

    /// The object's alarm, in Unix milliseconds, if one is set.
    pub(crate) fn alarm(&self) -> Result<Option<i64>> {
        Ok(match self.meta("alarm")? {
            Some(Value::Integer(millis)) => Some(millis),
            _ => None,
        })
    }

    fn meta(&self, name: &str) -> Result<Option<Value>> {
        self.conn
            .query_row("SELECT value FROM _stead_meta WHERE name = ?1", [name], |row| row.get(0))
            .optional()
            .map_err(|e| self.error("read", e))
    }

    /// Calls `visit` with each key and the size of its (encoded) value, in
    /// key order.
    pub(crate) fn keys(&self, mut visit: impl FnMut(&str, u64) -> Result<()>) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, length(CAST(value AS BLOB)) FROM _stead_kv ORDER BY key")
            .map_err(|e| self.error("read", e))?;
        let mut rows = stmt.query([]).map_err(|e| self.error("read", e))?;
        while let Some(row) = rows.next().map_err(|e| self.error("read", e))? {
            let key: String = row.get(0).map_err(|e| self.error("read", e))?;
            let bytes: i64 = row.get(1).map_err(|e| self.error("read", e))?;
            visit(&key, bytes.max(0) as u64)?;
        }
        Ok(())
    }

    /// How many keys the object has, and the total size of their values.
    pub(crate) fn key_totals(&self) -> Result<(u64, u64)> {
        self.conn
            .query_row(
                "SELECT count(*), ifnull(sum(length(CAST(value AS BLOB))), 0) FROM _stead_kv",
                [],
                |row| Ok((row.get::<_, i64>(0)?.max(0) as u64, row.get::<_, i64>(1)?.max(0) as u64)),
            )
            .map_err(|e| self.error("read", e))
    }

    /// The user's own SQL tables and their row counts.
    pub(crate) fn user_tables(&self) -> Result<Vec<(String, u64)>> {
        let names: Vec<String> = self
            .conn
            .prepare(
                "SELECT name FROM sqlite_schema WHERE type = 'table' \
                 AND name NOT LIKE '\\_stead\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
                 ORDER BY name",
            )
            .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
            .map_err(|e| self.error("read", e))?;
        names
            .into_iter()
            .map(|name| {
                let quoted = name.replace('"', "\"\"");
                let rows: i64 = self
                    .conn
                    .query_row(&format!("SELECT count(*) FROM \"{quoted}\""), [], |row| row.get(0))
                    .map_err(|e| self.error("read", e))?;
                Ok((name, rows.max(0) as u64))
            })
            .collect()
    }

    /// Runs one read-only statement and writes its rows to `out` as TSV,
    /// with a header line of column names. Returns the number of rows.
    pub(crate) fn query(&self, sql: &str, out: &mut impl Write) -> Result<u64> {
        if sql.trim().is_empty() {
            return Err(Error::NotReadOnly("an empty statement".into()));
        }
        let mut stmt = self.conn.prepare(sql).map_err(|e| match e {
            rusqlite::Error::MultipleStatement => Error::NotReadOnly(format!(
                "`{}` holds more than one statement, and each runs alone",
                one_line(sql)
            )),
            e => self.error("run the query on", e),
        })?;
        // The connection is read-only already; this refuses a write before it
        // runs instead of failing halfway (and says why).
        if !stmt.readonly() {
            return Err(Error::NotReadOnly(format!("`{}`", one_line(sql))));
        }
        let columns = stmt.column_count();
        let header: Vec<String> = stmt.column_names().iter().map(|name| one_line(name)).collect();
        if columns > 0 {
            writeln!(out, "{}", header.join("\t"))?;
        }
        let mut rows = stmt.query([]).map_err(|e| self.error("run the query on", e))?;
        let mut count = 0;
        while let Some(row) = rows.next().map_err(|e| self.error("run the query on", e))? {
            let mut cells = Vec::with_capacity(columns);
            for i in 0..columns {
                cells.push(cell(row.get_ref(i).map_err(|e| self.error("run the query on", e))?));
            }
            writeln!(out, "{}", cells.join("\t"))?;
            count += 1;
        }
        Ok(count)
    }

    /// An error of this database, with SQLite's lock and format errors said
    /// in the user's terms.
    fn error(&self, doing: &'static str, source: rusqlite::Error) -> Error {
        match source.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                Error::Active { type_name: self.type_name.clone(), id: self.id.clone() }
            }
            Some(ErrorCode::NotADatabase) => {
                Error::Foreign { path: self.path.clone(), what: "it is not an SQLite database".into() }
            }
            _ => Error::Sqlite { doing, path: self.path.clone(), source },
        }
    }
}

/// One TSV cell: `NULL`, a number, text on one line, or a blob as an SQL
/// hex literal.
fn cell(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(n) => n.to_string(),
        ValueRef::Real(x) => x.to_string(),
        ValueRef::Text(text) => one_line(&String::from_utf8_lossy(text)),
        ValueRef::Blob(bytes) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("x'{hex}'")
        }
    }
}

/// Removes the `-shm` file that a read-only WAL connection creates, when it
/// was not there before.
///
/// The runtime opens databases in exclusive locking mode, which keeps the WAL
/// index in memory and never uses a `-shm` file; a reader in normal mode
/// needs one and SQLite leaves it behind. Without this, listing a data
/// directory would leave a 32 KiB file beside every object. Removing it is
/// safe: a node never uses it, and another reader that opened it meanwhile
/// keeps its own mapping (it only reads).
struct ShmCleanup {
    created_by_us: Option<PathBuf>,
}

impl ShmCleanup {
    fn before_open(db: &Path) -> ShmCleanup {
        let shm = companion(db, "-shm");
        ShmCleanup { created_by_us: (!shm.exists()).then_some(shm) }
    }
}

impl Drop for ShmCleanup {
    fn drop(&mut self) {
        if let Some(shm) = &self.created_by_us {
            // Missing is fine: the goal is that none of ours is left.
            let _ = std::fs::remove_file(shm);
        }
    }
}
