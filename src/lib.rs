//! # stead: durable objects for Rust
//!
//! (The guide lives in the README; this page grows with it.)

pub use stead_runtime::*;

#[doc(inline)]
pub use stead_macros::durable_object;
