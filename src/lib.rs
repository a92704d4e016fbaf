#![doc = include_str!("../README.md")]
//!
//! # Crate layout
//!
//! This facade re-exports the runtime (`stead-runtime`: ids, namespaces,
//! activations, storage, alarms) and the `#[durable_object]` attribute
//! (`stead-macros`). Everything a user names is at the crate root, and the
//! testing kit is [`testing`].

pub use stead_runtime::*;

// The runtime's `testing` module, with documentation whose example (a test
// of an object) can run here, where `#[durable_object]` is.
pub mod testing;

#[doc(inline)]
pub use stead_macros::durable_object;
