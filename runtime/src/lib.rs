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
mod context;
mod error;
mod id;
mod mailbox;
mod namespace;
mod object;
mod runtime;
mod secret;
mod stub;

#[doc(hidden)]
pub mod __private;

pub use context::Context;
pub use error::{Error, Result};
pub use id::ObjectId;
pub use namespace::Namespace;
pub use object::{AlarmInfo, DurableObject};
pub use runtime::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAILBOX_CAPACITY, Durability, Runtime, RuntimeBuilder,
};
pub use stub::PendingCall;
