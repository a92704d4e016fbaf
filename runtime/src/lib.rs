//! The runtime of [stead](https://docs.rs/stead): durable objects for Rust.
//!
//! Users depend on the `stead` facade crate, which re-exports everything here
//! together with the `#[durable_object]` attribute; see its documentation for
//! the guide. This crate is organised after the design's concepts:
//!
//! - [`id`](ObjectId): ids and their MACs;
//! - [`Namespace`]: minting ids and making stubs;
//! - activations and mailboxes: one turn at a time per object, bounded queues;
//! - [`Context`]: what an object knows of itself;
//! - [`Runtime`]: configuration, hosting, eviction and shutdown.

mod activation;
mod alarm;
mod cluster;
mod context;
mod directory;
mod drive;
mod error;
mod id;
mod inbound;
mod mailbox;
mod namespace;
mod object;
mod outbound;
mod remote;
mod runtime;
mod secret;
mod storage;
mod stub;
mod sync;
mod wire;

#[doc(hidden)]
pub mod __private;

pub use alarm::MAX_ALARM_RETRIES;
pub use context::Context;
pub use directory::Directory;
pub use error::{Error, Result};
pub use id::ObjectId;
pub use namespace::Namespace;
pub use object::{AlarmInfo, DurableObject};
pub use runtime::{
    DEFAULT_ALARM_RETRY_DELAY, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAILBOX_CAPACITY, DEFAULT_MAX_OPEN_DATABASES,
    Durability, Runtime, RuntimeBuilder,
};
pub use storage::{ListOptions, MAX_KEY_LEN, Storage};

/// TLS identities for cluster nodes and clients.
pub mod tls {
    pub use stead_transport::tls::{Identity, TlsError, dev_identity, stranger_identity};
}

/// The SQLite bindings behind [`Storage::sql`], re-exported so that user code
/// uses the same version.
pub use rusqlite;
pub use stub::PendingCall;
