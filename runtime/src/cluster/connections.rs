//! The QUIC endpoint of this process and its connections to the other
//! nodes, one per peer, made on first use.

use std::collections::HashMap;
use std::net::SocketAddr;

use stead_transport::{Connection, Endpoint};

use crate::error::{Error, Result};

/// The endpoint, the peers' addresses, and a connection to each peer.
pub(crate) struct Connections {
    pub(crate) endpoint: Endpoint,
    peers: Vec<(String, SocketAddr)>,
    live: tokio::sync::Mutex<HashMap<String, Connection>>,
}

impl Connections {
    pub(crate) fn new(endpoint: Endpoint, peers: Vec<(String, SocketAddr)>) -> Self {
        Connections { endpoint, peers, live: tokio::sync::Mutex::new(HashMap::new()) }
    }

    /// Whether `name` is in the peer list.
    pub(crate) fn is_peer(&self, name: &str) -> bool {
        self.peers.iter().any(|(peer, _)| peer == name)
    }

    /// A live connection to node `name`, made if needed.
    pub(crate) async fn connect(&self, name: &str) -> Result<Connection> {
        let addr = self
            .peers
            .iter()
            .find(|(peer, _)| peer == name)
            .map(|(_, addr)| *addr)
            .ok_or_else(|| Error::Config(format!("there is no node `{name}` in the peer list")))?;
        let mut connections = self.live.lock().await;
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
