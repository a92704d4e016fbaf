//! A node's data directory, as the runtime's storage lays it out:
//! `objects/<type>/<first 2 hex digits of the id>/<64 hex digits>.sqlite`
//! (with the database's `-wal` beside it), `alarms.sqlite` (the node's alarm
//! index), `directory.sqlite` (a coordinator's directory) and `secret`.
//!
//! Walking it touches no database: sizes and times come from the files'
//! metadata, everything else from the databases (see `object_db`).

use std::fs;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, Result};

/// The length of an object id in hex digits.
const ID_LEN: usize = 64;

/// A data directory that exists and looks like a node's.
pub(crate) struct DataDir {
    root: PathBuf,
}

/// One object's database file, as found on disk.
pub(crate) struct ObjectFile {
    pub(crate) type_name: String,
    /// 64 lowercase hex digits.
    pub(crate) id: String,
    pub(crate) path: PathBuf,
    pub(crate) db_bytes: u64,
    pub(crate) wal_bytes: u64,
    /// When the database last changed: the database file's modification
    /// time, or its WAL's if that holds frames not yet moved into it (a
    /// node moves them when it evicts the object).
    pub(crate) last_write: SystemTime,
}

impl DataDir {
    /// The data directory at `root`; refused when it is missing or holds
    /// nothing a node writes (a mistyped path should not list "no objects").
    pub(crate) fn open(root: &Path) -> Result<DataDir> {
        match fs::metadata(root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(Error::NotADataDir(root.to_path_buf())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoDataDir(root.to_path_buf()));
            }
            Err(source) => return Err(Error::Io { doing: "read", path: root.to_path_buf(), source }),
        }
        let ours = ["objects", "secret", "alarms.sqlite", "directory.sqlite"];
        if !ours.iter().any(|name| root.join(name).exists()) {
            return Err(Error::NotADataDir(root.to_path_buf()));
        }
        Ok(DataDir { root: root.to_path_buf() })
    }

    /// The directory itself, as the user named it.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    fn objects(&self) -> PathBuf {
        self.root.join("objects")
    }

    /// The names of the types that have objects here, sorted.
    pub(crate) fn types(&self) -> Result<Vec<String>> {
        let objects = self.objects();
        if !objects.exists() {
            return Ok(Vec::new());
        }
        let mut types: Vec<String> =
            list_dir(&objects)?.into_iter().filter(|(_, is_dir)| *is_dir).map(|(name, _)| name).collect();
        types.sort();
        Ok(types)
    }

    /// Checks that objects of `type_name` were stored here.
    pub(crate) fn check_type(&self, type_name: &str) -> Result<()> {
        let types = self.types()?;
        if types.iter().any(|t| t == type_name) {
            return Ok(());
        }
        let known = if types.is_empty() {
            "it holds no objects at all".to_string()
        } else {
            let quoted: Vec<String> = types.iter().map(|t| format!("`{t}`")).collect();
            format!("the types there are {} (names are case-sensitive)", quoted.join(", "))
        };
        Err(Error::UnknownType { type_name: type_name.to_string(), data_dir: self.root.clone(), known })
    }

    /// The database file of object `id` (64 lowercase hex digits).
    pub(crate) fn object_path(&self, type_name: &str, id: &str) -> PathBuf {
        self.objects().join(type_name).join(&id[..2]).join(format!("{id}.sqlite"))
    }

    /// The object `id` of `type_name`, which must exist.
    pub(crate) fn object(&self, type_name: &str, id: &str) -> Result<ObjectFile> {
        self.check_type(type_name)?;
        let path = self.object_path(type_name, id);
        match file_info(type_name, id, &path)? {
            Some(file) => Ok(file),
            None => Err(Error::NoSuchObject {
                type_name: type_name.to_string(),
                id: id.to_string(),
                data_dir: self.root.clone(),
                path,
            }),
        }
    }

    /// Calls `visit` with every object of `types`, in order of type then id,
    /// until it breaks. Files that have no place in the layout are passed to
    /// `stray` (they are reported, not fatal).
    pub(crate) fn walk(
        &self,
        types: &[String],
        mut visit: impl FnMut(ObjectFile) -> Result<ControlFlow<()>>,
        mut stray: impl FnMut(&Path),
    ) -> Result<()> {
        for type_name in types {
            let type_dir = self.objects().join(type_name);
            let mut shards = list_dir(&type_dir)?;
            shards.sort();
            for (shard, is_dir) in shards {
                if !is_dir || shard.len() != 2 || !shard.bytes().all(is_lower_hex) {
                    stray(&type_dir.join(shard));
                    continue;
                }
                let shard_dir = type_dir.join(&shard);
                let mut files = list_dir(&shard_dir)?;
                files.sort();
                for (file, _) in files {
                    let Some(id) = database_id(&file) else {
                        if !is_companion(&file) {
                            stray(&shard_dir.join(&file));
                        }
                        continue;
                    };
                    if !id.starts_with(&shard) {
                        stray(&shard_dir.join(&file));
                        continue;
                    }
                    // A file that vanished since the listing was removed by
                    // its node (an emptied object): not an object any more.
                    let Some(object) = file_info(type_name, id, &shard_dir.join(&file))? else { continue };
                    if visit(object)?.is_break() {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

/// An id as the user typed it, checked and lowercased.
pub(crate) fn parse_id(text: &str) -> Result<String> {
    let malformed = |reason: String| Error::MalformedId { id: text.to_string(), reason };
    let length = text.chars().count();
    if length != ID_LEN {
        return Err(malformed(format!("it has {length} characters")));
    }
    if let Some((at, bad)) = text.chars().enumerate().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(malformed(format!("{bad:?} at position {} is not a hex digit", at + 1)));
    }
    Ok(text.to_ascii_lowercase())
}

/// The id of an object database's file name (`<64 hex digits>.sqlite`).
fn database_id(file: &str) -> Option<&str> {
    let id = file.strip_suffix(".sqlite")?;
    (id.len() == ID_LEN && id.bytes().all(is_lower_hex)).then_some(id)
}

/// SQLite's own files beside a database.
fn is_companion(file: &str) -> bool {
    ["-wal", "-shm", "-journal"]
        .iter()
        .any(|suffix| file.strip_suffix(suffix).is_some_and(|db| database_id(db).is_some()))
}

fn is_lower_hex(byte: u8) -> bool {
    byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)
}

/// Sizes and times of a database and its WAL; `None` when the database is
/// not there.
fn file_info(type_name: &str, id: &str, path: &Path) -> Result<Option<ObjectFile>> {
    let db = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Io { doing: "read", path: path.to_path_buf(), source }),
    };
    let mut last_write = db.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let mut wal_bytes = 0;
    if let Ok(wal) = fs::metadata(companion(path, "-wal")) {
        wal_bytes = wal.len();
        // Only a WAL with frames holds writes: an empty one is created by a
        // reader (or was emptied on eviction by an older node). A node keeps
        // an evicted object's WAL at its size, rewritten from its start by
        // the checkpoint of the close: its time is then that close's.
        if let (true, Ok(modified)) = (wal_bytes > 0, wal.modified()) {
            last_write = last_write.max(modified);
        }
    }
    Ok(Some(ObjectFile {
        type_name: type_name.to_string(),
        id: id.to_string(),
        path: path.to_path_buf(),
        db_bytes: db.len(),
        wal_bytes,
        last_write,
    }))
}

/// The path of a database's companion file (`-wal`, `-shm`).
pub(crate) fn companion(db: &Path, suffix: &str) -> PathBuf {
    let mut path = db.as_os_str().to_owned();
    path.push(suffix);
    PathBuf::from(path)
}

/// The entries of a directory: names (lossy UTF-8) and whether each is a
/// directory.
fn list_dir(dir: &Path) -> Result<Vec<(String, bool)>> {
    let io = |source| Error::Io { doing: "list", path: dir.to_path_buf(), source };
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let is_dir = entry.file_type().map_err(io)?.is_dir();
        entries.push((entry.file_name().to_string_lossy().into_owned(), is_dir));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_digits_and_come_out_lowercase() {
        let id = "AB".repeat(32);
        assert_eq!(parse_id(&id).unwrap(), "ab".repeat(32));
        let short = parse_id("abc").unwrap_err().to_string();
        assert!(short.contains("it has 3 characters"), "{short}");
        let bad = parse_id(&format!("{}g", "a".repeat(63))).unwrap_err().to_string();
        assert!(bad.contains("'g' at position 64 is not a hex digit"), "{bad}");
    }

    #[test]
    fn only_database_files_name_objects() {
        let id = "0f".repeat(32);
        assert_eq!(database_id(&format!("{id}.sqlite")), Some(id.as_str()));
        assert_eq!(database_id(&format!("{}.sqlite", "0F".repeat(32))), None);
        assert_eq!(database_id("notes.sqlite"), None);
        assert!(is_companion(&format!("{id}.sqlite-wal")));
        assert!(!is_companion("notes.sqlite-wal"));
    }
}
