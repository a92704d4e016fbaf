//! How a runtime takes part in a cluster, as configured, and the checks
//! that tell the user what to fix.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use stead_transport::{Identity, Liveness};

use crate::error::{Error, Result};

/// How a runtime takes part in a cluster, as configured.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClusterConfig {
    pub(crate) node: Option<String>,
    pub(crate) client: bool,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) peers: Vec<(String, SocketAddr)>,
    /// The PostgreSQL cluster's connection string, instead of a peer list.
    pub(crate) postgres: Option<String>,
    /// The address other processes reach this node at, when it is not the
    /// one it listens on (PostgreSQL mode).
    pub(crate) advertise: Option<SocketAddr>,
    /// How long a node's membership lasts without renewal (PostgreSQL mode).
    pub(crate) lease: Option<Duration>,
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
            || self.postgres.is_some()
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
        if let Some(postgres) = &self.postgres {
            self.validate_postgres(postgres)?;
        } else {
            self.validate_static()?;
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

    /// The lease of a node's membership (PostgreSQL mode).
    pub(crate) fn lease(&self) -> Duration {
        self.lease.unwrap_or(DEFAULT_LEASE)
    }

    fn validate_postgres(&self, conninfo: &str) -> Result<()> {
        let config = |message: String| Err(Error::Config(message));
        if let Some((name, _)) = self.peers.first() {
            return config(format!(
                "both `.postgres(..)` and `.peer(\"{name}\", ..)` were set: a PostgreSQL cluster finds its \
                 nodes in PostgreSQL; remove the `.peer` calls, or the `.postgres` call for a static cluster"
            ));
        }
        if conninfo.trim().is_empty() {
            return config(
                "`.postgres(conninfo)` needs a connection string, such as \
                \"host=db.example port=5432 user=stead dbname=stead\""
                    .into(),
            );
        }
        if let Some(node) = &self.node {
            check_name(node)?;
            let Some(listen) = self.listen else {
                return config(format!(
                    "node `{node}` of a PostgreSQL cluster needs `.listen(address)`: where it takes calls \
                     from the other processes (port 0 picks a free one)"
                ));
            };
            if listen.ip().is_unspecified() && self.advertise.is_none() {
                return config(format!(
                    "node `{node}` listens on {listen}, which other processes cannot dial: add \
                     `.advertise(address)` with the address they should use"
                ));
            }
            if self.advertise.is_some_and(|addr| addr.ip().is_unspecified() || addr.port() == 0) {
                return config(format!(
                    "`.advertise({})` must be an address other processes can dial: a real IP and port",
                    self.advertise.map(|a| a.to_string()).unwrap_or_default()
                ));
            }
        }
        let lease = self.lease();
        if lease < MIN_LEASE {
            return config(format!(
                "`lease` ({lease:?}) must be at least {MIN_LEASE:?}: a node renews it every quarter, and \
                 stops serving at two thirds of it without a renewal"
            ));
        }
        Ok(())
    }

    fn validate_static(&self) -> Result<()> {
        let config = |message: String| Err(Error::Config(message));
        if self.advertise.is_some() || self.lease.is_some() {
            return config(
                "`.advertise(..)` and `.lease(..)` belong to a PostgreSQL cluster: add `.postgres(conninfo)` \
                 or remove them"
                    .into(),
            );
        }
        if self.peers.is_empty() {
            return config("a cluster needs its peer list: `.peer(name, address)` for every node, in the same order on every process, or `.postgres(conninfo)` to find them in PostgreSQL".into());
        }
        for (i, (name, _)) in self.peers.iter().enumerate() {
            check_name(name)?;
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
        Ok(())
    }
}

/// How long a node's membership lasts without renewal unless configured
/// otherwise (PostgreSQL mode).
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// The shortest lease: renewals every quarter of it must stay meaningful
/// next to a PostgreSQL round trip.
const MIN_LEASE: Duration = Duration::from_millis(400);

/// Refuses node names that cannot be TLS server names.
pub(crate) fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 63 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(Error::Config(format!(
            "node name {name:?} must be letters, digits and `-` only, at most 63 of them (it is the TLS server name)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An identity of a CA of its own: `validate` only checks that there
    /// is one. (Each test its own name: the CA's directory is per name.)
    fn identity(test: &str) -> Option<stead_transport::Identity> {
        stead_transport::tls::stranger_identity(&format!("config-{test}")).ok()
    }

    fn postgres_node() -> ClusterConfig {
        postgres_node_of("node")
    }

    fn postgres_node_of(test: &str) -> ClusterConfig {
        ClusterConfig {
            node: Some("ohio".into()),
            postgres: Some("host=127.0.0.1 user=postgres".into()),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            identity: identity(test),
            ..ClusterConfig::default()
        }
    }

    fn refusal(config: &ClusterConfig) -> String {
        match config.validate() {
            Err(Error::Config(message)) => message,
            other => panic!("expected a Config error, got {other:?}"),
        }
    }

    #[test]
    fn a_postgres_node_is_valid_with_a_listen_address() {
        postgres_node().validate().unwrap();
    }

    #[test]
    fn each_postgres_setting_that_cannot_work_is_refused_saying_what_to_do() {
        let postgres_node = || postgres_node_of("settings");
        let mut both = postgres_node();
        both.peers.push(("ohio".into(), "127.0.0.1:4701".parse().unwrap()));
        assert!(refusal(&both).contains("both `.postgres(..)` and `.peer(\"ohio\", ..)`"));

        let no_listen = ClusterConfig { listen: None, ..postgres_node() };
        assert!(refusal(&no_listen).contains("needs `.listen(address)`"));

        let anywhere = ClusterConfig { listen: Some("0.0.0.0:4701".parse().unwrap()), ..postgres_node() };
        assert!(refusal(&anywhere).contains("add `.advertise(address)`"));
        let advertised = ClusterConfig { advertise: Some("127.0.0.1:4701".parse().unwrap()), ..anywhere };
        advertised.validate().unwrap();

        let short = ClusterConfig { lease: Some(Duration::from_millis(100)), ..postgres_node() };
        assert!(refusal(&short).contains("must be at least"));

        let empty = ClusterConfig { postgres: Some(" ".into()), ..postgres_node() };
        assert!(refusal(&empty).contains("needs a connection string"));
    }

    #[test]
    fn postgres_settings_without_postgres_are_refused() {
        let config = ClusterConfig {
            node: Some("ohio".into()),
            peers: vec![("ohio".into(), "127.0.0.1:4701".parse().unwrap())],
            lease: Some(Duration::from_secs(5)),
            identity: identity("static"),
            ..ClusterConfig::default()
        };
        assert!(refusal(&config).contains("belong to a PostgreSQL cluster"));
    }
}
