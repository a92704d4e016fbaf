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
    /// Calls to one object follow. `name` is the object's name when the
    /// caller made its id with `id_from_name` (checked by the node).
    Object { type_name: String, id: ObjectId, name: Option<String> },
    /// One directory request follows (to the coordinator).
    Directory,
    /// The first stream of every connection: the caller's view of the
    /// cluster, checked against the node's before anything else is served.
    Cluster(ClusterView),
    /// The same, from a process of a PostgreSQL cluster.
    PostgresCluster(PostgresView),
}

/// What every process of a static cluster must agree on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClusterView {
    /// The peer list, in order: `(name, address)`.
    pub(crate) peers: Vec<(String, String)>,
    /// A one-way fingerprint of the cluster secret.
    pub(crate) secret: [u8; 8],
}

/// What every process of a PostgreSQL cluster must agree on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PostgresView {
    /// The random id created with the cluster's tables: it names the
    /// database (not its address, which may differ between processes).
    pub(crate) cluster_id: String,
    /// A one-way fingerprint of the cluster secret.
    pub(crate) secret: [u8; 8],
}

/// This process's view of its cluster, shown as the first stream of every
/// connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum View {
    Static(ClusterView),
    Postgres(PostgresView),
}

impl View {
    /// The `Hello` that shows this view.
    pub(crate) fn hello(&self) -> Hello {
        match self {
            View::Static(view) => Hello::Cluster(view.clone()),
            View::Postgres(view) => Hello::PostgresCluster(view.clone()),
        }
    }

    /// Why `theirs` (the first frame of a peer's connection) is not this
    /// cluster, naming the difference; `None` when they agree.
    pub(crate) fn difference(&self, theirs: &Hello) -> Option<String> {
        let hex = |bytes: &[u8; 8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let secrets = |ours: &[u8; 8], theirs: &[u8; 8]| {
            (ours != theirs).then(|| {
                format!(
                    "the cluster secrets differ (fingerprint {} on the node, {} on the caller): give every \
                     process the same `.secret(..)`, or copy one `data_dir/secret` file to every node",
                    hex(ours),
                    hex(theirs)
                )
            })
        };
        let list = |peers: &[(String, String)]| {
            peers.iter().map(|(name, addr)| format!("{name}={addr}")).collect::<Vec<_>>().join(", ")
        };
        match (self, theirs) {
            (View::Static(ours), Hello::Cluster(theirs)) => {
                secrets(&ours.secret, &theirs.secret).or_else(|| {
                    (ours.peers != theirs.peers).then(|| {
                        format!(
                            "the peer lists differ (the node has [{}], the caller [{}]): every process must \
                             list the same nodes, at the same addresses, in the same order",
                            list(&ours.peers),
                            list(&theirs.peers)
                        )
                    })
                })
            }
            (View::Postgres(ours), Hello::PostgresCluster(theirs)) => secrets(&ours.secret, &theirs.secret)
                .or_else(|| {
                    (ours.cluster_id != theirs.cluster_id).then(|| {
                        format!(
                            "the PostgreSQL clusters differ (cluster id {} on the node, {} on the caller): \
                             the two processes use different PostgreSQL databases; give every process the \
                             same `.postgres(conninfo)` database",
                            ours.cluster_id, theirs.cluster_id
                        )
                    })
                }),
            (View::Static(ours), Hello::PostgresCluster(theirs)) => Some(format!(
                "the node is of a static cluster (peers [{}]) and the caller of the PostgreSQL cluster \
                 {}: configure every process with the same `.peer(..)` list or the same `.postgres(..)`",
                list(&ours.peers),
                theirs.cluster_id
            )),
            (View::Postgres(ours), Hello::Cluster(theirs)) => Some(format!(
                "the node is of the PostgreSQL cluster {} and the caller of a static cluster (peers [{}]): \
                 configure every process with the same `.postgres(..)` or the same `.peer(..)` list",
                ours.cluster_id,
                list(&theirs.peers)
            )),
            _ => Some("the caller did not show its view of the cluster".into()),
        }
    }
}

/// The node's answer to a [`Hello::Cluster`].
pub(crate) type ClusterAnswer = Result<(), Error>;

/// A call of a remote method.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) seq: u64,
    pub(crate) method: u32,
    pub(crate) fingerprint: u64,
    #[serde(with = "as_bytes")]
    pub(crate) args: Vec<u8>,
}

/// The outcome of the request with the same `seq`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Response {
    pub(crate) seq: u64,
    #[serde(with = "result_as_bytes")]
    pub(crate) result: Result<Vec<u8>, Error>,
}

/// A byte vector as serde *bytes* (its length, then the bytes, copied at
/// once) rather than as a sequence of numbers, one call per byte: the same
/// bytes on the wire, but megabytes of arguments cost a copy, not seconds
/// of a worker thread.
mod as_bytes {
    use std::fmt;

    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer, B: AsRef<[u8]>>(
        bytes: &B,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes.as_ref())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
            Ok(bytes.to_vec())
        }

        fn visit_byte_buf<E>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(bytes)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut bytes = Vec::new();
            while let Some(byte) = seq.next_element()? {
                bytes.push(byte);
            }
            Ok(bytes)
        }
    }
}

/// `Result<Vec<u8>, Error>` with its bytes as in [`as_bytes`], and the same
/// shape as serde gives a `Result` (variants `Ok` and `Err`, in that order).
mod result_as_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Error;

    #[derive(Serialize)]
    #[serde(rename = "Result")]
    enum Borrowed<'a> {
        Ok(#[serde(with = "super::as_bytes")] &'a Vec<u8>),
        Err(&'a Error),
    }

    #[derive(Deserialize)]
    #[serde(rename = "Result")]
    enum Owned {
        Ok(#[serde(with = "super::as_bytes")] Vec<u8>),
        Err(Error),
    }

    pub(super) fn serialize<S: Serializer>(
        result: &Result<Vec<u8>, Error>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match result {
            Ok(bytes) => Borrowed::Ok(bytes),
            Err(err) => Borrowed::Err(err),
        }
        .serialize(serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Result<Vec<u8>, Error>, D::Error> {
        Ok(match Owned::deserialize(deserializer)? {
            Owned::Ok(bytes) => Ok(bytes),
            Owned::Err(err) => Err(err),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire format stays what serde gives these types by default.
    #[test]
    fn requests_and_responses_encode_as_serde_would_by_default() {
        #[derive(Serialize)]
        struct PlainRequest {
            seq: u64,
            method: u32,
            fingerprint: u64,
            args: Vec<u8>,
        }
        #[derive(Serialize)]
        struct PlainResponse {
            seq: u64,
            result: Result<Vec<u8>, Error>,
        }
        use stead_transport::codec::{decode, encode};
        for len in [0usize, 1, 250, 251, 300, 70_000] {
            let args: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let request = Request { seq: 7, method: 2, fingerprint: 9, args: args.clone() };
            let plain = PlainRequest { seq: 7, method: 2, fingerprint: 9, args: args.clone() };
            assert_eq!(encode(&request).unwrap(), encode(&plain).unwrap(), "len {len}");
            assert_eq!(decode::<Request>(&encode(&plain).unwrap()).unwrap().args, args);
            for result in [Ok(args.clone()), Err(Error::Timeout("late".into()))] {
                let response = Response { seq: 3, result: result.clone() };
                let plain = PlainResponse { seq: 3, result: result.clone() };
                assert_eq!(encode(&response).unwrap(), encode(&plain).unwrap(), "len {len}");
                assert_eq!(decode::<Response>(&encode(&plain).unwrap()).unwrap().result, result);
            }
        }
    }
}

/// A question to a node about placements: to the coordinator's directory
/// (static cluster), or to the node a first call is meant for (PostgreSQL).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum DirectoryRequest {
    /// Where does this object live, if anywhere? (Anyone may ask.)
    Lookup { type_name: String, id: ObjectId },
    /// Place this object on the asking node, unless it lives somewhere
    /// already. Only a node may claim, and only for itself: the node is
    /// the one its certificate names.
    Claim { type_name: String, id: ObjectId },
    /// To a node of a PostgreSQL cluster: place this object on yourself,
    /// unless it lives somewhere already, and say where it lives. `name` is
    /// the object's name when its id was made with `id_from_name`.
    Place { type_name: String, id: ObjectId, name: Option<String> },
}

/// The object's owner, the node it lives on (none: not placed yet).
pub(crate) type DirectoryAnswer = Result<Option<String>, Error>;

/// The longest type name the directory keeps, in bytes.
pub(crate) const MAX_TYPE_NAME: usize = 256;

/// The longest `Hello` or directory frame a node reads.
pub(crate) const MAX_CONTROL_FRAME: usize = 64 * 1024;
