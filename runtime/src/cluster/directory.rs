//! The directory: which node each object lives on.
//!
//! An object lives on exactly one node, its *owner*, decided by the first
//! claim: "first writer wins". Only a node claims, and only for itself,
//! when the first call to the object reaches it (and only for a type it
//! hosts): a caller never writes the directory for someone else, so nobody
//! can bind an object to a node that does not exist or does not host it.
//! Callers only look the owner up, and cache it. The directory sits behind
//! the narrow [`Directory`] trait so that a cluster can keep it in a store
//! built for it.
//!
//! A PostgreSQL cluster keeps it in PostgreSQL (`postgres.rs`), where each
//! node claims its objects itself and keeps their names.
//!
//! The embedded default keeps the directory in an SQLite database on the
//! cluster's *coordinator* (the first node of the peer list): other
//! processes ask it over QUIC, and it takes a claim only from a peer whose
//! certificate names a node of the cluster, for that node. It serves
//! development and small clusters, and it is a single point of failure:
//! while the coordinator is down, objects whose owner is not cached cannot
//! be reached. Production clusters should use PostgreSQL.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection as Sqlite, OptionalExtension, params};
use stead_transport::frame::{read_frame, write_frame};
use stead_transport::{Connection, codec};

use super::connections::{Connections, connection_lost};
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::local::BoxFuture;
use crate::sync::lock;
use crate::wire::{DirectoryAnswer, DirectoryRequest, Hello, MAX_CONTROL_FRAME, MAX_TYPE_NAME};

/// Where objects live.
pub trait Directory: Send + Sync + 'static {
    /// The owner of object `id` of type `type_name`: the node it lives on,
    /// if it has been placed.
    fn lookup<'a>(&'a self, type_name: &'a str, id: &'a ObjectId) -> BoxFuture<'a, Result<Option<String>>>;

    /// Places object `id` of type `type_name` on `node` (the node asking,
    /// for itself), unless it lives somewhere already; returns its owner.
    fn claim<'a>(
        &'a self,
        type_name: &'a str,
        id: &'a ObjectId,
        node: &'a str,
    ) -> BoxFuture<'a, Result<String>>;

    /// Like [`claim`](Self::claim), keeping the object's `name` when its id
    /// was made with `id_from_name` (a directory that keeps names lists
    /// them); by default the name is not kept.
    fn claim_named<'a>(
        &'a self,
        type_name: &'a str,
        id: &'a ObjectId,
        node: &'a str,
        name: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String>> {
        let _ = name;
        self.claim(type_name, id, node)
    }
}

/// The coordinator's directory, in SQLite.
pub(crate) struct SqliteDirectory {
    conn: Mutex<Sqlite>,
}

impl SqliteDirectory {
    pub(crate) fn open(data_dir: Option<&Path>) -> Result<Self> {
        let conn = match data_dir {
            Some(dir) => Sqlite::open(dir.join("directory.sqlite")),
            None => Sqlite::open_in_memory(),
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

    pub(crate) fn lookup_now(&self, type_name: &str, id: &ObjectId) -> Result<Option<String>> {
        check_type_name(type_name)?;
        let conn = lock(&self.conn);
        conn.prepare_cached("SELECT node FROM placements WHERE type = ?1 AND id = ?2")
            .and_then(|mut stmt| {
                stmt.query_row(params![type_name, id.as_bytes().as_slice()], |row| row.get::<_, String>(0))
                    .optional()
            })
            .map_err(|e| Error::Storage(format!("the directory failed: {e}")))
    }

    pub(crate) fn claim_now(&self, type_name: &str, id: &ObjectId, node: &str) -> Result<String> {
        check_type_name(type_name)?;
        {
            let conn = lock(&self.conn);
            conn.prepare_cached(
                "INSERT INTO placements (type, id, node) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            )
            .and_then(|mut stmt| stmt.execute(params![type_name, id.as_bytes().as_slice(), node]))
            .map_err(|e| Error::Storage(format!("the directory failed: {e}")))?;
        }
        self.lookup_now(type_name, id)?
            .ok_or_else(|| Error::Storage("the directory lost a placement it had just written".into()))
    }
}

/// Refuses type names no hosted type can have (the directory stores them).
pub(super) fn check_type_name(type_name: &str) -> Result<()> {
    if type_name.is_empty() || type_name.len() > MAX_TYPE_NAME {
        return Err(Error::Config(format!(
            "a type name of {} bytes was refused: type names have 1 to {MAX_TYPE_NAME} bytes",
            type_name.len()
        )));
    }
    Ok(())
}

impl Directory for SqliteDirectory {
    fn lookup<'a>(&'a self, type_name: &'a str, id: &'a ObjectId) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move { self.lookup_now(type_name, id) })
    }

    fn claim<'a>(
        &'a self,
        type_name: &'a str,
        id: &'a ObjectId,
        node: &'a str,
    ) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move { self.claim_now(type_name, id, node) })
    }
}

/// The directory of a process other than the coordinator: asks the
/// coordinator, which knows who asks from its certificate.
pub(super) struct CoordinatorClient {
    connections: Arc<Connections>,
    coordinator: String,
}

impl CoordinatorClient {
    pub(super) fn new(connections: Arc<Connections>, coordinator: String) -> Self {
        CoordinatorClient { connections, coordinator }
    }

    async fn ask(&self, request: DirectoryRequest) -> Result<Option<String>> {
        let conn = self.connections.connect(&self.coordinator, None).await?;
        ask(&conn, &self.coordinator, &request).await
    }
}

/// Asks node `node`, on `conn`, one directory question.
pub(super) async fn ask(conn: &Connection, node: &str, request: &DirectoryRequest) -> Result<Option<String>> {
    let unavailable = |what: &str| {
        connection_lost(conn, node, format_args!("it did not answer the directory request: {what}"))
    };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| unavailable(&e.to_string()))?;
    let hello = codec::encode(&Hello::Directory)?;
    let request = codec::encode(request)?;
    write_frame(&mut send, &hello).await.map_err(|e| unavailable(&e.to_string()))?;
    write_frame(&mut send, &request).await.map_err(|e| unavailable(&e.to_string()))?;
    let _ = send.finish();
    let answer = read_frame(&mut recv, MAX_CONTROL_FRAME)
        .await
        .map_err(|e| unavailable(&e.to_string()))?
        .ok_or_else(|| unavailable("the stream ended"))?;
    codec::decode::<DirectoryAnswer>(&answer)?
}

impl Directory for CoordinatorClient {
    fn lookup<'a>(&'a self, type_name: &'a str, id: &'a ObjectId) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(self.ask(DirectoryRequest::Lookup { type_name: type_name.to_string(), id: *id }))
    }

    fn claim<'a>(
        &'a self,
        type_name: &'a str,
        id: &'a ObjectId,
        node: &'a str,
    ) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            // The coordinator takes the claimant from the certificate.
            let owner =
                self.ask(DirectoryRequest::Claim { type_name: type_name.to_string(), id: *id }).await?;
            owner.ok_or_else(|| {
                Error::Storage(format!("the coordinator did not record the claim of node `{node}`"))
            })
        })
    }
}
