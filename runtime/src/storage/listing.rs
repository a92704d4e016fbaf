//! Which objects of a type have a database, for `stead::testing::list_ids`:
//! those open in a [`Storage`], and those closed in their [`Location`].

use rusqlite::OptionalExtension;

use super::Storage;
use super::database::Location;
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::sync::lock;

impl Location {
    /// The objects of type `type_name` whose databases are closed (parked,
    /// in memory), each with the name it stored if it is in memory; the
    /// databases open in a turn are not among them, nor are their names
    /// read (a file's name would need its lock).
    pub(crate) fn closed_objects(&self, type_name: &str) -> Result<Vec<(ObjectId, Option<String>)>> {
        match self {
            Location::Memory(parked) => Ok(lock(parked)
                .iter()
                .filter(|((of, _), _)| *of == type_name)
                .map(|((_, id), conn)| {
                    let name = conn
                        .query_row("SELECT value FROM _stead_meta WHERE name = 'name'", [], |row| row.get(0))
                        .optional()
                        .ok()
                        .flatten();
                    (*id, name)
                })
                .collect()),
            Location::Files(root) => {
                let dir = root.join("objects").join(type_name);
                let shards = match std::fs::read_dir(&dir) {
                    Ok(shards) => shards,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(err) => return Err(Error::Storage(format!("cannot list {}: {err}", dir.display()))),
                };
                let mut found = Vec::new();
                for shard in shards.flatten() {
                    let Ok(files) = std::fs::read_dir(shard.path()) else { continue };
                    for file in files.flatten() {
                        let path = file.path();
                        // `<64 hex digits>.sqlite`; anything else is not an object's.
                        if path.extension().is_some_and(|ext| ext == "sqlite")
                            && let Some(id) =
                                path.file_stem().and_then(|stem| stem.to_str()).and_then(parse_hex_id)
                        {
                            found.push((id, None));
                        }
                    }
                }
                Ok(found)
            }
        }
    }
}

impl Storage {
    /// Whether the object's database is open here (it then exists).
    pub(crate) fn has_database(&self) -> bool {
        self.lock().conn.is_some()
    }
}

/// The id written as 64 hex digits (its MAC is checked by the caller).
fn parse_hex_id(text: &str) -> Option<ObjectId> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let bytes =
        (0..32).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()).collect::<Option<Vec<u8>>>()?;
    ObjectId::from_slice(&bytes)
}
