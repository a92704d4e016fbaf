//! The messages nodes exchange, each encoded with the codec in one frame.
//!
//! A stream starts with a [`Hello`] that says what it is for. An object
//! stream then carries [`Request`]s one way and [`Response`]s the other: one
//! stream per stub-object pair, so QUIC's in-order delivery within a stream
//! gives E-order across the network, and the stub does not wait for one
//! reply before sending the next call. Responses carry the request's
//! sequence number because a refused call (`Overloaded`) is answered before
//! the calls queued ahead of it.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::id::ObjectId;

/// The first frame of every stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Hello {
    /// Calls to one object follow.
    Object { type_name: String, id: ObjectId },
    /// One directory request follows (to the coordinator).
    Directory,
}

/// A call of a remote method.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) seq: u64,
    pub(crate) method: u32,
    pub(crate) fingerprint: u64,
    pub(crate) args: Vec<u8>,
}

/// The outcome of the request with the same `seq`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Response {
    pub(crate) seq: u64,
    pub(crate) result: Result<Vec<u8>, Error>,
}

/// A question to the coordinator's directory.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum DirectoryRequest {
    /// Where does this object live, if anywhere? (Anyone may ask.)
    Lookup { type_name: String, id: ObjectId },
    /// Place this object on the asking node, unless it lives somewhere
    /// already. Only a node may claim, and only for itself: the node is
    /// the one its certificate names.
    Claim { type_name: String, id: ObjectId },
}

/// The object's owner, the node it lives on (none: not placed yet).
pub(crate) type DirectoryAnswer = Result<Option<String>, Error>;

/// The longest type name the directory keeps, in bytes.
pub(crate) const MAX_TYPE_NAME: usize = 256;

/// The longest `Hello` or directory frame a node reads.
pub(crate) const MAX_CONTROL_FRAME: usize = 64 * 1024;
