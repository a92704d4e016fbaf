//! The cluster: a static list of named nodes that share a secret and a CA.
//!
//! Every node and client is configured with the same ordered peer list
//! (`RuntimeBuilder::peer`); the first peer is the *coordinator*, which
//! keeps the embedded directory. A process is either one of the nodes
//! (`RuntimeBuilder::node`, it hosts objects and listens) or a client only
//! (`RuntimeBuilder::client`, it hosts nothing and only calls).
//!
//! Placement: an object lives on its *target* node: the node of its first
//! caller, as in Cloudflare, unless the first call came through
//! `Namespace::stub_at`, whose node is the target instead. A client-only
//! caller targets the coordinator unless it names a node. The directory
//! keeps the first placement for good: the node it names is the object's
//! *owner*, and an object is never re-created elsewhere, so a node that is
//! down makes its objects `Unavailable` (retryable) until it is back with
//! its storage.
//!
//! | file | what |
//! | --- | --- |
//! | `config.rs` | the builder's cluster settings and their checks |
//! | `directory.rs` | where objects live: the trait, the coordinator's SQLite directory and its client |
//! | `route.rs` | the caller's side: a stub's stream, opened on its first call |
//! | `outbound.rs`, `inbound.rs` | requests written, and responses read, by the callers themselves |
//! | `serve.rs` | the serving side: streams from other processes, run as calls |

mod config;
mod directory;
mod inbound;
mod outbound;
mod route;
mod serve;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use stead_transport::{Connection, Endpoint, Identity};

pub(crate) use config::ClusterConfig;
use directory::CoordinatorClient;
pub use directory::Directory;
pub(crate) use directory::SqliteDirectory;
pub(crate) use inbound::RemoteReply;
pub(crate) use route::ClusterRoute;
pub(crate) use serve::serve;

use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::sync::lock;

/// The cluster as seen by one process.
pub(crate) struct Cluster {
    pub(crate) me: Option<String>,
    peers: Vec<(String, SocketAddr)>,
    pub(crate) endpoint: Endpoint,
    connections: tokio::sync::Mutex<HashMap<String, Connection>>,
    directory: Arc<dyn Directory>,
    /// The coordinator's own directory, when this node is the coordinator.
    pub(crate) local_directory: Option<Arc<SqliteDirectory>>,
    placements: Mutex<HashMap<(String, ObjectId), String>>,
}

impl Cluster {
    /// Binds the endpoint and opens the directory (no connection is made).
    pub(crate) fn start(config: &ClusterConfig, data_dir: Option<&std::path::Path>) -> Result<Arc<Self>> {
        config.validate()?;
        let identity = match (&config.identity, &config.identity_files) {
            (Some(identity), _) => identity.clone(),
            (None, Some((ca, chain, key))) => Identity::from_pem_files(ca, chain, key)
                .map_err(|e| Error::Config(format!("cannot load the TLS identity: {e}")))?,
            (None, None) => return Err(Error::Config("no TLS identity".into())),
        };
        let identity = &identity;
        // A node listens where the peer list says, unless told otherwise
        // (`validate` made sure the node is in the list).
        let listen = config.node.as_ref().map(|node| {
            config.listen.unwrap_or_else(|| {
                let own = config.peers.iter().find(|(name, _)| name == node);
                own.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |(_, addr)| *addr)
            })
        });
        let version = config.protocol_version.unwrap_or(stead_transport::PROTOCOL_VERSION);
        let endpoint = Endpoint::bind_with_version(identity, listen, version)
            .map_err(|e| Error::Transport(e.to_string()))?;
        let coordinator = config.peers[0].0.clone();
        let is_coordinator = config.node.as_deref() == Some(coordinator.as_str());
        let local_directory =
            if is_coordinator { Some(Arc::new(SqliteDirectory::open(data_dir)?)) } else { None };
        Ok(Arc::new_cyclic(|weak: &std::sync::Weak<Cluster>| {
            let directory: Arc<dyn Directory> = match &local_directory {
                Some(local) => local.clone(),
                None => Arc::new(CoordinatorClient::new(weak.clone(), coordinator)),
            };
            Cluster {
                me: config.node.clone(),
                peers: config.peers.clone(),
                endpoint,
                connections: tokio::sync::Mutex::new(HashMap::new()),
                directory,
                local_directory,
                placements: Mutex::new(HashMap::new()),
            }
        }))
    }

    pub(crate) fn coordinator(&self) -> &str {
        &self.peers[0].0
    }

    /// The owner of object `id`: the node it lives on, placing it on
    /// `target` if it has no owner yet. Cached after the first answer.
    pub(crate) async fn locate(&self, type_name: &str, id: &ObjectId, target: &str) -> Result<String> {
        let key = (type_name.to_string(), *id);
        if let Some(owner) = lock(&self.placements).get(&key) {
            return Ok(owner.clone());
        }
        if !self.peers.iter().any(|(name, _)| name == target) {
            return Err(Error::Config(format!("there is no node `{target}` in the peer list")));
        }
        let owner = self.directory.place(type_name, id, target).await?;
        lock(&self.placements).insert(key, owner.clone());
        Ok(owner)
    }

    /// A live connection to node `name`, made if needed.
    pub(crate) async fn connection(&self, name: &str) -> Result<Connection> {
        let addr = self
            .peers
            .iter()
            .find(|(peer, _)| peer == name)
            .map(|(_, addr)| *addr)
            .ok_or_else(|| Error::Config(format!("there is no node `{name}` in the peer list")))?;
        let mut connections = self.connections.lock().await;
        if let Some(conn) = connections.get(name)
            && conn.close_reason().is_none()
        {
            return Ok(conn.clone());
        }
        let conn = self.endpoint.connect(addr, name).await.map_err(|e| transport_to_error(name, e))?;
        connections.insert(name.to_string(), conn.clone());
        Ok(conn)
    }
}

/// Maps a connection failure to the caller's error: another protocol
/// version is `Incompatible`, anything else makes the node `Unavailable`.
pub(crate) fn transport_to_error(node: &str, err: stead_transport::TransportError) -> Error {
    match err {
        stead_transport::TransportError::Version(reason) => Error::Incompatible(reason),
        other => Error::Unavailable(format!("node `{node}` is unavailable: {other}")),
    }
}

/// The error for a stream that failed on `conn` to node `node`: the
/// connection's close reason when it has one (a version mismatch is
/// `Incompatible`), else `Unavailable` with `what` happened.
pub(crate) fn connection_lost(conn: &Connection, node: &str, what: impl std::fmt::Display) -> Error {
    match conn.close_reason() {
        Some(reason) => {
            transport_to_error(node, stead_transport::connection_error(&format!("`{node}`"), reason))
        }
        None => Error::Unavailable(format!("node `{node}` is unavailable: {what}")),
    }
}
