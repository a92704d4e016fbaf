//! How a runtime takes part in a cluster, as configured, and the checks
//! that tell the user what to fix.

use std::net::SocketAddr;
use std::path::PathBuf;

use stead_transport::{Identity, Liveness};

use crate::error::{Error, Result};

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
    /// How dead peers are noticed.
    pub(crate) liveness: Liveness,
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
        let Liveness { keep_alive, peer_timeout, connect_timeout } = self.liveness;
        if keep_alive.is_zero() || connect_timeout.is_zero() {
            return config("`keep_alive` and `connect_timeout` must be longer than zero".into());
        }
        if peer_timeout <= keep_alive {
            return config(format!(
                "`peer_timeout` ({peer_timeout:?}) must be longer than `keep_alive` ({keep_alive:?}), or \
                 live but idle peers would be taken for dead; a few keep-alives per timeout is usual"
            ));
        }
        if self.identity.is_none() && self.identity_files.is_none() {
            return config("a cluster runtime needs its TLS identity: `.tls(stead::tls::Identity::from_pem_files(..))`, or `stead::tls::dev_identity(dir, name)` for development".into());
        }
        Ok(())
    }
}
