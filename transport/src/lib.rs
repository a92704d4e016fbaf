//! The wire of stead.
//!
//! This crate knows nothing of objects: it turns values into bytes and back
//! ([`codec`]), and (in a later stage) moves those bytes between processes.
//! It depends on no other crate of the workspace, so that the runtime can be
//! read and tested on its own.

pub mod codec;

pub use codec::{CodecError, MAX_VALUE_SIZE};
