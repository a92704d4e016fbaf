//! The wire of stead.
//!
//! This crate knows nothing of objects: it turns values into bytes and back
//! ([`codec`]), frames them on QUIC streams ([`frame`]), and runs the QUIC
//! endpoint with mutual TLS ([`Endpoint`], [`tls`]). It depends on no other
//! crate of the workspace.

pub mod codec;
mod endpoint;
pub mod frame;
pub mod tls;

pub use codec::{CodecError, MAX_VALUE_SIZE};
pub use endpoint::{CLOSE_VERSION_MISMATCH, Endpoint, Flow, Liveness, PROTOCOL_VERSION, connection_error};
pub use quinn::{Connection, RecvStream, SendStream, VarInt};
pub use tls::{Identity, TlsError, dev_identity};

/// Something went wrong on the network.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The TLS configuration is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The socket could not be bound.
    #[error("{0}")]
    Bind(String),
    /// A setting is out of range.
    #[error("{0}")]
    Config(String),
    /// A connection could not be made or was lost.
    #[error("{0}")]
    Connect(String),
    /// An incoming handshake failed (for example, no certificate from the CA).
    #[error("{0}")]
    Handshake(String),
    /// The peer speaks another protocol version.
    #[error("{0}")]
    Version(String),
    /// A stream failed.
    #[error("stream failed: {0}")]
    Stream(String),
    /// A frame was longer than allowed.
    #[error("a frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The frame's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes on a stream were not a valid frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl From<TlsError> for TransportError {
    fn from(err: TlsError) -> Self {
        TransportError::Tls(err.0)
    }
}
