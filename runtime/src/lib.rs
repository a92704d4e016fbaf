//! The runtime of [stead](https://docs.rs/stead): durable objects for Rust.
//!
//! Users depend on the `stead` facade crate, which re-exports everything here
//! together with the `#[durable_object]` attribute; see its documentation for
//! the guide.
//!
//! # Concept map
//!
//! The crate is layered; each layer imports only the ones below it.
//!
//! | concept | where |
//! | --- | --- |
//! | the user's entry points: builder, [`Runtime`], shutdown | `runtime.rs` |
//! | [`Namespace`]: minting ids, making stubs | `namespace.rs` |
//! | stubs: queueing a call when it is made (E-order), the reply future | `stub.rs` |
//! | [`Context`]: what an object knows of itself | `context.rs` |
//! | [`DurableObject`]: what `#[durable_object]` implements | `object.rs` |
//! | **cluster**: nodes, clients, placement | `cluster/` |
//! | the directory: where objects live ([`Directory`]) | `cluster/directory.rs` |
//! | a remote stub's stream: requests out, responses in | `cluster/route.rs`, `outbound.rs`, `inbound.rs` |
//! | serving other processes' calls | `cluster/serve.rs` |
//! | a cluster on PostgreSQL: schema, directory; membership, leases, self-fencing ([`NodeInfo`]) | `cluster/postgres.rs`, `cluster/membership.rs` |
//! | **one process's objects**: hosted types and their activations | `local/`, `local/hosted.rs` |
//! | an activation: one turn at a time, the output gate | `local/activation.rs` |
//! | who runs turns: the scheduling state machine and its model test | `local/schedule.rs`, `local/drive.rs` |
//! | the mailbox: bounded, in order, `Overloaded` when full | `local/mailbox.rs` |
//! | calls whose callers never poll | `local/watchdog.rs` |
//! | eviction of idle objects | `local/eviction.rs` |
//! | alarms: the alarm turn, retries, the scheduler ([`AlarmInfo`]) | `local/alarms.rs` |
//! | **storage**: per-object SQLite, KV and SQL ([`Storage`]) | `storage/` |
//! | the turn's transaction, storage refused outside its object's turns, [`Durability`] | `storage/turn.rs`, `storage/durability.rs` |
//! | the node's alarm index (alarms found after a restart), its batched writes | `storage/alarm_index.rs`, `storage/group_commit.rs` |
//! | where databases live, the cap on open ones | `storage/database.rs`, `storage/pool.rs` |
//! | replies held until commits are synced or shipped (the durable output gate), checkpoints | `storage/flush.rs`, `storage/wal.rs`, `storage/upkeep.rs` |
//! | replicated storage: a database as a cache of its log in PostgreSQL, the WAL's newest frames in memory, shipping and fencing | `storage/replica.rs`, `storage/wal_buffer.rs`, `cluster/replication.rs` |
//! | what the lower layers get instead of `Runtime`: settings, lifecycle, storage root | `host.rs` |
//! | tracing spans and events, metrics, the Prometheus endpoint | `observe/` |
//! | ids and their MACs ([`ObjectId`]), the cluster secret | `id.rs`, `secret.rs` |
//! | messages between nodes | `wire.rs` |
//! | every memory bound, with its default ([`Limits`]) | `limits.rs` |
//! | the testing kit: test runtimes, alarms run now, instances reached in a turn, ids listed ([`testing`]) | `testing.rs`, `local/visit.rs`, `storage/listing.rs` |
//! | the one [`Error`] type | `error.rs` |
//!
//! Imports run downward: `storage/` imports none of `local/`, `cluster/`
//! or the top; `local/` imports no `cluster/`; only the top files import
//! `runtime.rs`.
//!
//! No `unsafe` code, but in `storage/wal_buffer.rs` (SQLite's VFS
//! interface is C).

#![deny(unsafe_code)]

mod cluster;
mod context;
mod error;
mod host;
mod id;
mod limits;
mod local;
mod namespace;
mod object;
mod observe;
mod postgres;
mod runtime;
mod secret;
mod storage;
mod stub;
mod sync;
pub mod testing;
mod wire;

#[doc(hidden)]
pub mod __private;

/// The `stead` command's read-only view of a PostgreSQL cluster's tables;
/// not part of the API (its rows follow the schema's version).
#[doc(hidden)]
pub use cluster::inspect;

pub use cluster::{Directory, NodeInfo};
pub use context::Context;
pub use error::{Error, Result};
pub use id::ObjectId;
pub use limits::Limits;
pub use local::{AlarmInfo, MAX_ALARM_RETRIES, MAX_ALARMS_IN_FLIGHT};
pub use namespace::Namespace;
pub use object::DurableObject;
pub use postgres::{Param, Postgres};
pub use runtime::{
    DEFAULT_ALARM_RETRY_DELAY, DEFAULT_CALL_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAILBOX_CAPACITY,
    DEFAULT_MAX_OPEN_DATABASES, DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_SYNC_THREADS, Runtime, RuntimeBuilder,
};
pub use storage::{Durability, ListOptions, MAX_KEY_LEN, Storage};
/// The PostgreSQL driver stead uses, for [`Param`] values (`ToSql`).
pub use tokio_postgres;

/// TLS identities for cluster nodes and clients.
pub mod tls {
    pub use stead_transport::tls::{Identity, TlsError, dev_identity, stranger_identity};
}

/// The SQLite bindings behind [`Storage::sql`], re-exported so that user code
/// uses the same version.
pub use rusqlite;
pub use stub::{ObjectStub, PendingCall};
