//! The directory: which node each object lives on.
//!
//! An object lives on exactly one node, decided by the first placement:
//! "first writer wins". Callers cache the answer. The directory sits behind
//! the narrow [`Directory`] trait so that a cluster can keep it in a store
//! built for it.
//!
//! The embedded default keeps the directory in an SQLite database on the
//! cluster's *coordinator* (the first node of the peer list): other nodes
//! ask it over QUIC. It serves development and small clusters, and it is a
//! single point of failure: while the coordinator is down, objects whose
//! placement is not cached cannot be reached. Production clusters should use
//! a replicated store (a PostgreSQL backend is planned).

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use stead_transport::codec;
use stead_transport::frame::{read_frame, write_frame};

use super::connections::{Connections, connection_lost};
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::local::BoxFuture;
use crate::sync::lock;
use crate::wire::{Hello, MAX_CONTROL_FRAME, Place, Placed};

/// Where objects live.
pub trait Directory: Send + Sync + 'static {
    /// Places object `id` of type `type_name` on node `target`, unless it
    /// has been placed already; returns its owner, the node it lives on (the
    /// first writer's target).
    fn place<'a>(
        &'a self,
        type_name: &'a str,
        id: &'a ObjectId,
        target: &'a str,
    ) -> BoxFuture<'a, Result<String>>;
}

/// The coordinator's directory, in SQLite.
pub(crate) struct SqliteDirectory {
    conn: Mutex<Connection>,
}

impl SqliteDirectory {
    pub(crate) fn open(data_dir: Option<&Path>) -> Result<Self> {
        let conn = match data_dir {
            Some(dir) => Connection::open(dir.join("directory.sqlite")),
            None => Connection::open_in_memory(),
        }
        .map_err(|e| Error::Storage(format!("cannot open the directory database: {e}")))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS placements (
                 type TEXT NOT NULL, id BLOB NOT NULL, node TEXT NOT NULL,
                 PRIMARY KEY (type, id)) WITHOUT ROWID;",
        )
        .map_err(|e| Error::Storage(format!("cannot initialise the directory database: {e}")))?;
        Ok(SqliteDirectory { conn: Mutex::new(conn) })
    }

    pub(crate) fn place_now(&self, type_name: &str, id: &ObjectId, target: &str) -> Result<String> {
        let conn = lock(&self.conn);
        let id = id.as_bytes().as_slice();
        let placed = conn
            .prepare_cached(
                "INSERT INTO placements (type, id, node) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            )
            .and_then(|mut stmt| stmt.execute(params![type_name, id, target]))
            .and_then(|_| {
                conn.prepare_cached("SELECT node FROM placements WHERE type = ?1 AND id = ?2")?
                    .query_row(params![type_name, id], |row| row.get::<_, String>(0))
                    .optional()
            })
            .map_err(|e| Error::Storage(format!("the directory failed: {e}")))?;
        placed.ok_or_else(|| Error::Storage("the directory lost a placement it had just written".into()))
    }
}

impl Directory for SqliteDirectory {
    fn place<'a>(
        &'a self,
        type_name: &'a str,
        id: &'a ObjectId,
        target: &'a str,
    ) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move { self.place_now(type_name, id, target) })
    }
}

/// The directory of a non-coordinator node: asks the coordinator.
pub(super) struct CoordinatorClient {
    connections: Arc<Connections>,
    coordinator: String,
}

impl CoordinatorClient {
    pub(super) fn new(connections: Arc<Connections>, coordinator: String) -> Self {
        CoordinatorClient { connections, coordinator }
    }
}

impl Directory for CoordinatorClient {
    fn place<'a>(
        &'a self,
        type_name: &'a str,
        id: &'a ObjectId,
        target: &'a str,
    ) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let conn = self.connections.connect(&self.coordinator).await?;
            let unavailable = |what: &str| {
                connection_lost(
                    &conn,
                    &self.coordinator,
                    format_args!("it did not answer a placement: {what}"),
                )
            };
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| unavailable(&e.to_string()))?;
            let hello = codec::encode(&Hello::Directory)?;
            let place = codec::encode(&Place {
                type_name: type_name.to_string(),
                id: *id,
                target: target.to_string(),
            })?;
            write_frame(&mut send, &hello).await.map_err(|e| unavailable(&e.to_string()))?;
            write_frame(&mut send, &place).await.map_err(|e| unavailable(&e.to_string()))?;
            let _ = send.finish();
            let answer = read_frame(&mut recv, MAX_CONTROL_FRAME)
                .await
                .map_err(|e| unavailable(&e.to_string()))?
                .ok_or_else(|| unavailable("the stream ended"))?;
            codec::decode::<Placed>(&answer)?
        })
    }
}
