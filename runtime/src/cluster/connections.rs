//! The QUIC endpoint of this process and its connections to the other
//! nodes, one per peer, made on first use. A static cluster's peers are
//! fixed; a PostgreSQL cluster's come and go with its membership table.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stead_transport::frame::{read_frame, write_frame};
use stead_transport::{Connection, Endpoint, codec};

use crate::error::{Error, Result};
use crate::sync::lock;
use crate::wire::{ClusterAnswer, MAX_CONTROL_FRAME, View};

/// The endpoint, and each peer with its connection.
pub(crate) struct Connections {
    pub(crate) endpoint: Endpoint,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    /// This process's view of the cluster, shown to every peer it connects
    /// to.
    pub(crate) view: View,
}

/// A peer's address and its connection, made on first use. Each peer has
/// its own lock, held across a connection attempt: callers of a peer that
/// does not answer wait for that peer only.
struct Peer {
    addr: SocketAddr,
    /// Which run of the node this is (PostgreSQL mode; 0 in a static
    /// cluster): a restarted node is a new peer, with a new connection.
    incarnation: i64,
    live: tokio::sync::Mutex<Option<Connection>>,
}

impl Peer {
    fn new(addr: SocketAddr, incarnation: i64) -> Arc<Self> {
        Arc::new(Peer { addr, incarnation, live: tokio::sync::Mutex::new(None) })
    }
}

impl Connections {
    pub(crate) fn new(endpoint: Endpoint, peers: &[(String, SocketAddr)], view: View) -> Self {
        let peers = peers.iter().map(|(name, addr)| (name.clone(), Peer::new(*addr, 0))).collect();
        Connections { endpoint, peers: Mutex::new(peers), view }
    }

    /// Whether `name` is a known node.
    pub(crate) fn is_peer(&self, name: &str) -> bool {
        lock(&self.peers).contains_key(name)
    }

    /// Records node `name` at `addr` (PostgreSQL mode): a node seen at a
    /// new address or in a new incarnation gets a new connection.
    pub(crate) fn set_peer(&self, name: &str, addr: SocketAddr, incarnation: i64) {
        let mut peers = lock(&self.peers);
        let known = peers.get(name).is_some_and(|p| p.addr == addr && p.incarnation == incarnation);
        if !known {
            peers.insert(name.to_string(), Peer::new(addr, incarnation));
        }
    }

    /// The known nodes: name, address, and whether a connection to it is
    /// open now.
    pub(crate) async fn peers(&self) -> Vec<(String, SocketAddr, bool)> {
        let peers: Vec<_> = lock(&self.peers).iter().map(|(n, p)| (n.clone(), p.clone())).collect();
        let mut listed = Vec::with_capacity(peers.len());
        for (name, peer) in peers {
            let connected = peer.live.lock().await.as_ref().is_some_and(|c| c.close_reason().is_none());
            listed.push((name, peer.addr, connected));
        }
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        listed
    }

    /// The node of the cluster that the peer of `conn` is, by its
    /// certificate; none for a client (any other certificate of the CA).
    pub(crate) fn node_of(&self, conn: &Connection) -> Option<String> {
        lock(&self.peers).keys().find(|name| Endpoint::certifies(conn, name)).cloned()
    }

    /// Whether this process had a connection to node `name` and lost it
    /// (the node may be dead; its membership is worth reading again before
    /// calls go there). False while a connection attempt is under way.
    pub(crate) fn lost(&self, name: &str) -> bool {
        let Some(peer) = lock(&self.peers).get(name).cloned() else { return false };
        peer.live.try_lock().is_ok_and(|live| live.as_ref().is_some_and(|c| c.close_reason().is_some()))
    }

    /// A live connection to node `name`, made if needed, waiting at most
    /// `within` for it when given (else the connect timeout).
    pub(crate) async fn connect(&self, name: &str, within: Option<Duration>) -> Result<Connection> {
        let peer = lock(&self.peers)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Config(format!("there is no node `{name}` in the cluster")))?;
        let mut live = peer.live.lock().await;
        if let Some(conn) = live.as_ref()
            && conn.close_reason().is_none()
        {
            return Ok(conn.clone());
        }
        let timeout = within.unwrap_or(self.endpoint.connect_timeout());
        let connecting = self.endpoint.connect_within(peer.addr, name, timeout).await;
        let conn = connecting.map_err(|e| transport_to_error(name, e))?;
        self.agree(&conn, name).await?;
        *live = Some(conn.clone());
        Ok(conn)
    }

    /// Shows the node this process's view of the cluster, on the
    /// connection's first stream; the node answers whether it agrees.
    async fn agree(&self, conn: &Connection, name: &str) -> Result<()> {
        let lost = |what: String| connection_lost(conn, name, what);
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(e.to_string()))?;
        let hello = codec::encode(&self.view.hello())?;
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
