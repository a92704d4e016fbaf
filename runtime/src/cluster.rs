//! The cluster: a static list of named nodes that share a secret and a CA.
//!
//! Every node and client is configured with the same ordered peer list
//! (`RuntimeBuilder::peer`); the first peer is the *coordinator*, which
//! keeps the embedded directory. A process is either one of the nodes
//! (`RuntimeBuilder::node`, it hosts objects and listens) or a client only
//! (`RuntimeBuilder::client`, it hosts nothing and only calls).
//!
//! Placement: an object lives on the node of its first caller, as in
//! Cloudflare, unless the first call came through `Namespace::stub_at`,
//! whose node wins instead. A client-only caller places on the coordinator
//! unless it gives a hint. The directory remembers the first placement for
//! good: an object is never re-created elsewhere, so a node that is down
//! makes its objects `Unavailable` (retryable) until it is back with its
//! storage.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use stead_transport::frame::{read_frame, write_frame};
use stead_transport::{Connection, Endpoint, Identity, codec};

use crate::directory::{Directory, SqliteDirectory};
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::object::BoxFuture;
use crate::sync::lock;
use crate::wire::{Hello, MAX_CONTROL_FRAME, Place, Placed};

/// How a runtime takes part in a cluster, as configured.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClusterConfig {
    pub(crate) node: Option<String>,
    pub(crate) client: bool,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) peers: Vec<(String, SocketAddr)>,
    pub(crate) identity: Option<Identity>,
    pub(crate) identity_files: Option<(PathBuf, PathBuf, PathBuf)>,
    pub(crate) protocol_version: Option<u32>,
}

impl ClusterConfig {
    pub(crate) fn is_set(&self) -> bool {
        self.node.is_some()
            || self.client
            || !self.peers.is_empty()
            || self.identity.is_some()
            || self.identity_files.is_some()
    }

    /// Checks the configuration, saying what to fix.
    pub(crate) fn validate(&self) -> Result<()> {
        let config = |message: String| Err(Error::Config(message));
        match (&self.node, self.client) {
            (Some(node), true) => {
                return config(format!(
                    "`node(\"{node}\")` and `client()` were both set; a process is one or the other"
                ));
            }
            (None, false) => {
                return config(
                    "a cluster runtime needs `.node(name)` (it hosts objects) or `.client()` (it only calls)"
                        .into(),
                );
            }
            _ => {}
        }
        if self.peers.is_empty() {
            return config("a cluster needs its peer list: `.peer(name, address)` for every node, in the same order on every process".into());
        }
        for (i, (name, _)) in self.peers.iter().enumerate() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return config(format!(
                    "node name {name:?} must be letters, digits and `-` only (it is the TLS server name)"
                ));
            }
            if self.peers[..i].iter().any(|(other, _)| other == name) {
                return config(format!(
                    "node `{name}` appears twice in the peer list; node names must be unique"
                ));
            }
        }
        if let Some(node) = &self.node
            && !self.peers.iter().any(|(name, _)| name == node)
        {
            let names: Vec<_> = self.peers.iter().map(|(name, _)| name.as_str()).collect();
            return config(format!(
                "this node, `{node}`, is not in the peer list {names:?}; add `.peer(\"{node}\", address)`"
            ));
        }
        if self.identity.is_none() && self.identity_files.is_none() {
            return config("a cluster runtime needs its TLS identity: `.tls(stead::tls::Identity::from_pem_files(..))`, or `stead::tls::dev_identity(dir, name)` for development".into());
        }
        Ok(())
    }
}

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
            .map_err(|e| Error::Config(e.to_string()))?;
        let coordinator = config.peers[0].0.clone();
        let is_coordinator = config.node.as_deref() == Some(coordinator.as_str());
        let local_directory =
            if is_coordinator { Some(Arc::new(SqliteDirectory::open(data_dir)?)) } else { None };
        Ok(Arc::new_cyclic(|weak: &std::sync::Weak<Cluster>| {
            let directory: Arc<dyn Directory> = match &local_directory {
                Some(local) => local.clone(),
                None => Arc::new(CoordinatorClient { cluster: weak.clone(), coordinator }),
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

    /// The node object `id` lives on, placing it on `candidate` if it has
    /// no node yet. Cached after the first answer.
    pub(crate) async fn locate(&self, type_name: &str, id: &ObjectId, candidate: &str) -> Result<String> {
        let key = (type_name.to_string(), *id);
        if let Some(node) = lock(&self.placements).get(&key) {
            return Ok(node.clone());
        }
        if !self.peers.iter().any(|(name, _)| name == candidate) {
            return Err(Error::Config(format!("there is no node `{candidate}` in the peer list")));
        }
        let node = self.directory.place(type_name, id, candidate).await?;
        lock(&self.placements).insert(key, node.clone());
        Ok(node)
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

/// The directory of a non-coordinator node: asks the coordinator.
struct CoordinatorClient {
    cluster: std::sync::Weak<Cluster>,
    coordinator: String,
}

impl Directory for CoordinatorClient {
    fn place<'a>(
        &'a self,
        type_name: &'a str,
        id: &'a ObjectId,
        node: &'a str,
    ) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let cluster = self
                .cluster
                .upgrade()
                .ok_or_else(|| Error::Unavailable("the runtime is shutting down".into()))?;
            let conn = cluster.connection(&self.coordinator).await?;
            let unavailable = |what: &str| {
                connection_lost(
                    &conn,
                    &self.coordinator,
                    format_args!("it did not answer a placement: {what}"),
                )
            };
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| unavailable(&e.to_string()))?;
            let hello = codec::encode(&Hello::Directory)?;
            let place =
                codec::encode(&Place { type_name: type_name.to_string(), id: *id, node: node.to_string() })?;
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
