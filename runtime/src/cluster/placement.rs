//! This process in the cluster: its name, its connections, and where
//! objects live. The owner of each object is asked of the directory once
//! and then cached.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use stead_transport::{Connection, Endpoint, Flow, Identity};

use super::config::ClusterConfig;
use super::connections::Connections;
use super::directory::{CoordinatorClient, Directory, SqliteDirectory};
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::limits::Limits;
use crate::sync::lock;
use crate::wire::ClusterView;

/// Eight bytes of a one-way hash of the cluster secret: enough to tell two
/// secrets apart, nothing to learn the secret from.
fn secret_fingerprint(secret: &[u8; 32]) -> [u8; 8] {
    let hash = blake3::derive_key("stead 2026 cluster secret fingerprint", secret);
    let mut fingerprint = [0u8; 8];
    fingerprint.copy_from_slice(&hash[..8]);
    fingerprint
}

/// The cluster as seen by one process.
pub(crate) struct Cluster {
    /// This node's name; none for a client.
    pub(crate) me: Option<String>,
    coordinator: String,
    pub(crate) connections: Arc<Connections>,
    directory: Arc<dyn Directory>,
    /// The coordinator's own directory, when this node is the coordinator.
    pub(crate) local_directory: Option<Arc<SqliteDirectory>>,
    placements: Mutex<Placements>,
}

impl Cluster {
    /// Binds the endpoint and opens the directory (no connection is made).
    /// Starts this process's part of the cluster; `secret` is the cluster
    /// secret (only a fingerprint of it is ever shown to peers).
    pub(crate) fn start(
        config: &ClusterConfig,
        data_dir: Option<&std::path::Path>,
        secret: &[u8; 32],
        limits: &Limits,
    ) -> Result<Arc<Self>> {
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
        let flow = Flow {
            max_streams: limits.max_streams_per_connection,
            stream_window: limits.stream_window,
            connection_window: limits.connection_window,
        };
        let endpoint = Endpoint::bind_with(identity, listen, config.liveness, flow, version)
            .map_err(|e| Error::Transport(e.to_string()))?;
        let coordinator = config.peers[0].0.clone();
        let is_coordinator = config.node.as_deref() == Some(coordinator.as_str());
        let local_directory =
            if is_coordinator { Some(Arc::new(SqliteDirectory::open(data_dir)?)) } else { None };
        let view = ClusterView {
            peers: config.peers.iter().map(|(name, addr)| (name.clone(), addr.to_string())).collect(),
            secret: secret_fingerprint(secret),
        };
        let connections = Arc::new(Connections::new(endpoint, &config.peers, view));
        let directory: Arc<dyn Directory> = match &local_directory {
            Some(local) => local.clone(),
            None => Arc::new(CoordinatorClient::new(connections.clone(), coordinator.clone())),
        };
        Ok(Arc::new(Cluster {
            me: config.node.clone(),
            coordinator,
            connections,
            directory,
            local_directory,
            placements: Mutex::new(Placements::new(limits.placement_cache)),
        }))
    }

    /// The node that keeps the directory: the first of the peer list.
    pub(crate) fn coordinator(&self) -> &str {
        &self.coordinator
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.connections.endpoint
    }

    /// A live connection to node `name`, made if needed.
    pub(crate) async fn connection(&self, name: &str) -> Result<Connection> {
        self.connections.connect(name).await
    }

    /// Where calls to object `id` go: its owner, if it has one (cached
    /// once known); else `target`, which claims the object when the first
    /// call reaches it. A node that is its own target claims it here, so
    /// that it never runs an object another node owns.
    pub(crate) async fn route(&self, type_name: &str, id: &ObjectId, target: &str) -> Result<String> {
        if let Some(owner) = self.cached(type_name, id) {
            return Ok(owner);
        }
        if let Some(owner) = self.directory.lookup(type_name, id).await? {
            self.cache(type_name, id, &owner);
            return Ok(owner);
        }
        if self.me.as_deref() == Some(target) {
            return self.claim(type_name, id).await;
        }
        if !self.connections.is_peer(target) {
            return Err(Error::Config(format!("there is no node `{target}` in the peer list")));
        }
        Ok(target.to_string())
    }

    /// Claims object `id` for this node (which hosts its type), unless it
    /// lives somewhere already; returns its owner.
    pub(crate) async fn claim(&self, type_name: &str, id: &ObjectId) -> Result<String> {
        if let Some(owner) = self.cached(type_name, id) {
            return Ok(owner);
        }
        let me = self.me.as_deref().ok_or_else(|| Error::Config("a client hosts no objects".into()))?;
        let owner = self.directory.claim(type_name, id, me).await?;
        self.cache(type_name, id, &owner);
        Ok(owner)
    }

    fn cached(&self, type_name: &str, id: &ObjectId) -> Option<String> {
        lock(&self.placements).owners.get(&(type_name.to_string(), *id)).cloned()
    }

    fn cache(&self, type_name: &str, id: &ObjectId, owner: &str) {
        lock(&self.placements).insert((type_name.to_string(), *id), owner.to_string());
    }
}

/// The owners a process remembers: at most `capacity`, the oldest
/// forgotten first (a forgotten owner is looked up again when needed).
struct Placements {
    owners: HashMap<(String, ObjectId), String>,
    /// Keys in the order they were remembered.
    order: VecDeque<(String, ObjectId)>,
    capacity: usize,
}

impl Placements {
    fn new(capacity: usize) -> Self {
        Placements { owners: HashMap::new(), order: VecDeque::new(), capacity }
    }

    fn insert(&mut self, key: (String, ObjectId), owner: String) {
        if self.owners.insert(key.clone(), owner).is_none() {
            self.order.push_back(key);
        }
        while self.owners.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else { break };
            self.owners.remove(&oldest);
        }
    }
}
