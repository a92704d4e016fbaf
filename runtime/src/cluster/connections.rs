//! The QUIC endpoint of this process and its connections to the other
//! nodes, one per peer, made on first use.

use std::collections::HashMap;
use std::net::SocketAddr;

use stead_transport::frame::{read_frame, write_frame};
use stead_transport::{Connection, Endpoint, codec};

use crate::error::{Error, Result};
use crate::wire::{ClusterAnswer, ClusterView, Hello, MAX_CONTROL_FRAME};

/// The endpoint, and each peer with its connection.
pub(crate) struct Connections {
    pub(crate) endpoint: Endpoint,
    peers: HashMap<String, Peer>,
    /// This process's view of the cluster, shown to every peer it connects
    /// to.
    pub(crate) view: ClusterView,
}

/// A peer's address and its connection, made on first use. Each peer has
/// its own lock, held across a connection attempt: callers of a peer that
/// does not answer wait for that peer only.
struct Peer {
    addr: SocketAddr,
    live: tokio::sync::Mutex<Option<Connection>>,
}

impl Connections {
    pub(crate) fn new(endpoint: Endpoint, peers: &[(String, SocketAddr)], view: ClusterView) -> Self {
        let peers = peers
            .iter()
            .map(|(name, addr)| (name.clone(), Peer { addr: *addr, live: tokio::sync::Mutex::new(None) }))
            .collect();
        Connections { endpoint, peers, view }
    }

    /// Whether `name` is in the peer list.
    pub(crate) fn is_peer(&self, name: &str) -> bool {
        self.peers.contains_key(name)
    }

    /// The node of the cluster that the peer of `conn` is, by its
    /// certificate; none for a client (any other certificate of the CA).
    pub(crate) fn node_of(&self, conn: &Connection) -> Option<&str> {
        self.peers.keys().map(String::as_str).find(|name| Endpoint::certifies(conn, name))
    }

    /// A live connection to node `name`, made if needed.
    pub(crate) async fn connect(&self, name: &str) -> Result<Connection> {
        let peer = self
            .peers
            .get(name)
            .ok_or_else(|| Error::Config(format!("there is no node `{name}` in the peer list")))?;
        let mut live = peer.live.lock().await;
        if let Some(conn) = live.as_ref()
            && conn.close_reason().is_none()
        {
            return Ok(conn.clone());
        }
        let conn = self.endpoint.connect(peer.addr, name).await.map_err(|e| transport_to_error(name, e))?;
        self.agree(&conn, name).await?;
        *live = Some(conn.clone());
        Ok(conn)
    }

    /// Shows the node this process's view of the cluster, on the
    /// connection's first stream; the node answers whether it agrees.
    async fn agree(&self, conn: &Connection, name: &str) -> Result<()> {
        let lost = |what: String| connection_lost(conn, name, what);
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(e.to_string()))?;
        let hello = codec::encode(&Hello::Cluster(self.view.clone()))?;
        write_frame(&mut send, &hello).await.map_err(|e| lost(e.to_string()))?;
        let _ = send.finish();
        let answer = read_frame(&mut recv, MAX_CONTROL_FRAME)
            .await
            .map_err(|e| lost(e.to_string()))?
            .ok_or_else(|| lost("it closed the cluster check without an answer".into()))?;
        codec::decode::<ClusterAnswer>(&answer)?.inspect_err(|_| {
            conn.close(0u32.into(), b"not the same cluster");
        })
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
