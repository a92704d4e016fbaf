#![doc = include_str!("../README.md")]
//!
//! # Crate layout
//!
//! This facade re-exports the runtime (`stead-runtime`: ids, namespaces,
//! activations, storage, alarms) and the `#[durable_object]` attribute
//! (`stead-macros`). Everything a user names is at the crate root.

pub use stead_runtime::*;

#[doc(inline)]
pub use stead_macros::durable_object;
