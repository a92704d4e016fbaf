//! The cluster: named nodes that share a secret and a CA, found in one of
//! two ways.
//!
//! - *Static*: every node and client is configured with the same ordered
//!   peer list (`RuntimeBuilder::peer`); the first peer is the
//!   *coordinator*, which keeps the embedded directory.
//! - *PostgreSQL* (`RuntimeBuilder::postgres`): nodes register themselves
//!   in PostgreSQL with a lease, and the directory lives there too
//!   (`membership.rs`, `postgres.rs`); there is no peer list and no
//!   coordinator.
//!
//! A process is either one of the nodes
//! (`RuntimeBuilder::node`, it hosts objects and listens) or a client only
//! (`RuntimeBuilder::client`, it hosts nothing and only calls).
//!
//! Placement: an object lives on its *target* node: the node of its first
//! caller, as in Cloudflare, unless the first call came through
//! `Namespace::stub_at`, whose node is the target instead. A client-only
//! caller targets the coordinator (static) or a live node that hosts the
//! type (PostgreSQL) unless it names a node. The directory
//! keeps the first placement for good: the node it names is the object's
//! *owner*, and an object is never re-created elsewhere, so a node that is
//! down makes its objects `Unavailable` (retryable) until it is back with
//! its storage.
//!
//! | file | what |
//! | --- | --- |
//! | `config.rs` | the builder's cluster settings and their checks |
//! | `placement.rs` | this process in the cluster: who it is, and where objects live (cached) |
//! | `connections.rs` | the QUIC endpoint and one connection per peer |
//! | `directory.rs` | where objects live: the trait, the coordinator's SQLite directory and its client |
//! | `postgres.rs` | PostgreSQL: the connection, the schema and its version, the directory kept there |
//! | `driven.rs` | PostgreSQL: a connection driven by the task that uses it (the lane's) |
//! | `inspect.rs` | PostgreSQL: a read-only view of the tables, for the `stead` command |
//! | `membership.rs` | PostgreSQL: nodes' registration, leases and self-fencing, the members |
//! | `route.rs` | the caller's side: a stub's route, its stream or this node's mailbox |
//! | `opening.rs` | a stub's first call: finding the object, in the caller's poll |
//! | `outbound.rs`, `inbound.rs` | requests written, and responses read, by the callers themselves |
//! | `serve.rs` | the serving side: streams from other processes, run as calls |

mod config;
mod connections;
mod directory;
mod driven;
mod inbound;
pub mod inspect;
mod membership;
mod opening;
mod orphans;
mod outbound;
mod placement;
mod postgres;
mod replication;
mod route;
mod serve;

pub(crate) use config::ClusterConfig;
pub use directory::Directory;
pub(crate) use inbound::RemoteReply;
pub(crate) use opening::FirstReply;
pub(crate) use orphans::adopt_alarms;
pub(crate) use placement::Cluster;
pub use placement::NodeInfo;
pub(crate) use replication::PostgresLog;
pub(crate) use route::{ClusterRoute, Sent};
pub(crate) use serve::serve;
