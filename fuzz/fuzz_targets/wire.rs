//! The messages nodes exchange (`runtime/src/wire.rs`), decoded from
//! arbitrary bytes with the project's codec, as a node decodes each frame.
//!
//! The messages are private to the runtime, so this target decodes mirror
//! types of the same shape: bincode's serde format depends only on the shape
//! (field order and types, variant order), never on names, so a mirror reads
//! exactly the bytes the real message reads, through the same serde impls of
//! `String`, `Vec<u8>`, `ObjectId` and `stead::Error`. A message added to or
//! changed in `wire.rs` must be mirrored here.
//!
//! Checks that decoding never panics, that a refusal says which type could
//! not be decoded, and that a decoded message encodes to bytes that decode
//! to the same message.

#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use stead::{Error, ObjectId};
use stead_transport::codec;

/// `wire::Hello`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Hello {
    Object { type_name: String, id: ObjectId, name: Option<String> },
    Directory,
    Cluster(ClusterView),
    PostgresCluster(PostgresView),
}

/// `wire::ClusterView`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct ClusterView {
    peers: Vec<(String, String)>,
    secret: [u8; 8],
}

/// `wire::PostgresView`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct PostgresView {
    cluster_id: String,
    secret: [u8; 8],
}

/// `wire::Request`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Request {
    seq: u64,
    method: u32,
    fingerprint: u64,
    args: Vec<u8>,
}

/// `wire::Response`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Response {
    seq: u64,
    result: Result<Vec<u8>, Error>,
}

/// `wire::DirectoryRequest`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum DirectoryRequest {
    Lookup { type_name: String, id: ObjectId },
    Claim { type_name: String, id: ObjectId },
    Place { type_name: String, id: ObjectId, name: Option<String> },
}

/// `wire::DirectoryAnswer`.
type DirectoryAnswer = Result<Option<String>, Error>;

/// `wire::ClusterAnswer`.
type ClusterAnswer = Result<(), Error>;

fuzz_target!(|bytes: &[u8]| {
    check::<Hello>(bytes);
    check::<Request>(bytes);
    check::<Response>(bytes);
    check::<DirectoryRequest>(bytes);
    check::<DirectoryAnswer>(bytes);
    check::<ClusterAnswer>(bytes);
});

fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) {
    match codec::decode::<T>(bytes) {
        Ok(message) => {
            let again = codec::encode(&message).expect("a decoded message encodes");
            assert_eq!(codec::decode::<T>(&again).expect("its encoding decodes"), message);
        }
        Err(err) => assert!(err.message().starts_with("could not decode a value of type"), "{err}"),
    }
}
