//! Decoders: every function that reads bytes or text from outside the process
//! refuses bad input with a clear error and never panics.
//!
//! Random bytes (and headers or lengths claiming huge sizes) go to the codec
//! (as the wire messages, arguments and common value types), to the frame
//! reader's header check, and random text to `id_from_str`. The fuzz targets
//! in `fuzz/` explore the same functions for longer; what they found is kept
//! here as regression cases.

#![allow(missing_docs)] // test objects are exercised, not documented

use std::collections::BTreeMap;
use std::fmt::Debug;

use common::Counter;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use stead::__private::ArgsReader;
use stead::{Error, ObjectId, Runtime};
use stead_transport::TransportError;
use stead_transport::codec::{self, MAX_VALUE_SIZE};
use stead_transport::frame::{MAX_FRAME_LEN, split_frame};

mod common;

/// The shape of the runtime's `Hello` (private to the runtime; the codec's
/// format depends only on the shape). `Request` and `Response` have the
/// shapes of tuples, the directory's answers of results, decoded as such
/// below.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Hello {
    Object { type_name: String, id: ObjectId, name: Option<String> },
    Directory,
    Cluster(ClusterView),
    PostgresCluster(PostgresView),
}

/// The shape of the runtime's `ClusterView`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct ClusterView {
    peers: Vec<(String, String)>,
    secret: [u8; 8],
}

/// The shape of the runtime's `PostgresView`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct PostgresView {
    cluster_id: String,
    secret: [u8; 8],
}

/// The shape of the runtime's `DirectoryRequest`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum DirectoryRequest {
    Lookup { type_name: String, id: ObjectId },
    Claim { type_name: String, id: ObjectId },
    Place { type_name: String, id: ObjectId, name: Option<String> },
}

type Request = (u64, u32, u64, Vec<u8>);
type Response = (u64, Result<Vec<u8>, Error>);
type DirectoryAnswer = Result<Option<String>, Error>;
type ClusterAnswer = Result<(), Error>;

/// A nested value like those users pass as arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Value {
    Unit,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

/// Lengths at and around every limit, and the largest of each integer width.
fn huge_len() -> impl Strategy<Value = u64> {
    let limits = [MAX_VALUE_SIZE as u64, MAX_FRAME_LEN as u64, u32::MAX as u64, u64::MAX];
    prop_oneof![
        proptest::sample::select(limits.to_vec()).prop_flat_map(|limit| limit.saturating_sub(2)..=limit),
        proptest::sample::select(limits.to_vec()).prop_map(|limit| limit.saturating_add(1)),
        any::<u64>(),
    ]
}

/// Random bytes, and random bytes after a varint length claiming a huge
/// size (the codec's integers and lengths are varints: one byte below 251,
/// else a marker and 2, 4 or 8 little-endian bytes).
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        (huge_len(), proptest::collection::vec(any::<u8>(), 0..64), 0..3usize).prop_map(
            |(len, tail, skip)| {
                let mut bytes = vec![0u8; skip]; // a tag or two before the length
                bytes.push(0xFD);
                bytes.extend_from_slice(&len.to_le_bytes());
                bytes.extend_from_slice(&tail);
                bytes
            }
        ),
        (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(len, tail)| {
            let mut bytes = vec![0xFC];
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&tail);
            bytes
        }),
    ]
}

/// Decodes `bytes` as a `T` with `decode` and `decode_prefix`: neither
/// panics, they agree, and a refusal names the type.
fn decodes<T: DeserializeOwned + Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
    let whole = codec::decode::<T>(bytes);
    let prefix = codec::decode_prefix::<T>(bytes);
    match (&whole, &prefix) {
        (Ok(_), Ok((_, used))) => prop_assert_eq!(*used, bytes.len()),
        (Err(err), Ok((_, used))) => {
            prop_assert!(*used < bytes.len());
            prop_assert!(err.message().contains("trailing bytes"), "{}", err);
        }
        (Err(err), Err(_)) => {
            let expected = format!("could not decode a value of type `{}`", std::any::type_name::<T>());
            prop_assert!(err.message().starts_with(&expected), "{}", err);
        }
        (Ok(value), Err(err)) => prop_assert!(false, "decode gave {:?}, decode_prefix {}", value, err),
    }
    Ok(())
}

proptest! {
    #[test]
    fn random_bytes_decode_as_a_wire_message_or_a_clear_error(bytes in hostile_bytes()) {
        decodes::<Hello>(&bytes)?;
        decodes::<Request>(&bytes)?;
        decodes::<Response>(&bytes)?;
        decodes::<DirectoryRequest>(&bytes)?;
        decodes::<DirectoryAnswer>(&bytes)?;
        decodes::<ClusterAnswer>(&bytes)?;
    }

    #[test]
    fn random_bytes_decode_as_common_values_or_a_clear_error(bytes in hostile_bytes()) {
        decodes::<u64>(&bytes)?;
        decodes::<i128>(&bytes)?;
        decodes::<f64>(&bytes)?;
        decodes::<char>(&bytes)?;
        decodes::<bool>(&bytes)?;
        decodes::<String>(&bytes)?;
        decodes::<Vec<u8>>(&bytes)?;
        decodes::<Vec<String>>(&bytes)?;
        decodes::<Option<(u32, String)>>(&bytes)?;
        decodes::<BTreeMap<String, Vec<u8>>>(&bytes)?;
        decodes::<std::time::SystemTime>(&bytes)?;
        decodes::<std::time::Duration>(&bytes)?;
        decodes::<ObjectId>(&bytes)?;
        decodes::<Error>(&bytes)?;
        decodes::<Result<Vec<u8>, Error>>(&bytes)?;
        decodes::<Value>(&bytes)?;
    }

    #[test]
    fn the_byte_vector_shortcut_reads_what_the_ordinary_path_reads(bytes in hostile_bytes()) {
        let fast = codec::decode_owned_prefix::<Vec<u8>>(&bytes);
        let slow = codec::decode_prefix::<Vec<u8>>(&bytes);
        match (&fast, &slow) {
            (Ok(fast), Ok(slow)) => prop_assert_eq!(fast, slow),
            (Err(fast), Err(slow)) => {
                let expected = "could not decode a value of type `alloc::vec::Vec<u8>`: ";
                prop_assert!(fast.message().starts_with(expected), "{}", fast);
                prop_assert!(slow.message().starts_with(expected), "{}", slow);
            }
            _ => prop_assert!(false, "the paths disagree: {:?} and {:?}", fast, slow),
        }
    }

    #[test]
    fn random_arguments_are_refused_with_the_method_named(bytes in hostile_bytes()) {
        let mut args = ArgsReader::new("rename", &bytes);
        let read = args.read::<u64>().and_then(|_| args.read::<Vec<u8>>()).and_then(|_| args.read::<String>());
        let outcome = match read {
            Ok(_) => args.finish(),
            Err(err) => Err(err),
        };
        if let Err(err) = outcome {
            let message = format!("{err:?}");
            prop_assert!(message.contains("the arguments of `rename`"), "{}", message);
        }
    }

    #[test]
    fn values_come_back_unchanged_from_encoding(
        number in any::<u64>(),
        text in any::<String>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        failed in any::<bool>(),
    ) {
        let result = if failed { Err(Error::Storage(text.clone())) } else { Ok(bytes.clone()) };
        let value = (number, text, bytes, result);
        let encoded = codec::encode(&value).unwrap();
        prop_assert_eq!(codec::decode::<(u64, String, Vec<u8>, Result<Vec<u8>, Error>)>(&encoded).unwrap(), value);
    }

    #[test]
    fn random_frames_are_cut_as_their_header_says_or_refused(
        header in prop_oneof![
            huge_len().prop_map(|len| len as u32),
            (0..300u32),
            any::<u32>(),
        ],
        tail in proptest::collection::vec(any::<u8>(), 0..400),
        max in prop_oneof![Just(MAX_FRAME_LEN), 0..300usize],
    ) {
        let mut buf = header.to_le_bytes().to_vec();
        buf.extend_from_slice(&tail);
        for end in 0..=buf.len() {
            match split_frame(&buf[..end], max) {
                Ok(Some((payload, used))) => {
                    prop_assert_eq!(payload.len(), header as usize);
                    prop_assert_eq!(used, 4 + payload.len());
                    prop_assert!(used <= end);
                    prop_assert_eq!(payload, &buf[4..used]);
                }
                Ok(None) => prop_assert!(end < 4 || (header as usize <= max && end < 4 + header as usize)),
                Err(TransportError::FrameTooLarge { len, max: limit }) => {
                    prop_assert!(end >= 4 && len == header as usize && len > max && limit == max);
                }
                Err(other) => prop_assert!(false, "unexpected error: {}", other),
            }
        }
    }
}

/// Found by the property test above: a byte vector whose length was cut
/// short was refused as "a value of type `u64`", naming the length instead
/// of what the caller asked for.
#[test]
fn a_byte_vector_cut_inside_its_length_is_refused_as_a_byte_vector() {
    for bytes in [&[251u8][..], &[252, 1], &[253, 1, 2, 3]] {
        let err = codec::decode_owned_prefix::<Vec<u8>>(bytes).unwrap_err();
        assert!(
            err.message().starts_with("could not decode a value of type `alloc::vec::Vec<u8>`: "),
            "{err}"
        );
        let mut args = ArgsReader::new("upload", bytes);
        let err = format!("{:?}", args.read::<Vec<u8>>().unwrap_err());
        assert!(
            err.contains("the arguments of `upload`: could not decode a value of type `alloc::vec::Vec<u8>`"),
            "{err}"
        );
    }
}

#[test]
fn a_header_announcing_more_than_the_limit_is_refused_before_its_payload_arrives() {
    let header = (MAX_FRAME_LEN as u32 + 1).to_le_bytes();
    let err = split_frame(&header, MAX_FRAME_LEN).unwrap_err();
    assert_eq!(err.to_string(), "a frame of 16777217 bytes exceeds the limit of 16777216 bytes");
    assert!(split_frame(&u32::MAX.to_le_bytes(), MAX_FRAME_LEN).is_err());
    // At the limit, the reader waits for the payload.
    assert_eq!(split_frame(&(MAX_FRAME_LEN as u32).to_le_bytes(), MAX_FRAME_LEN).unwrap(), None);
}

#[test]
fn lengths_claiming_more_than_is_there_are_refused_without_allocating() {
    for len in [MAX_VALUE_SIZE as u64, MAX_VALUE_SIZE as u64 + 1, u32::MAX as u64, u64::MAX] {
        let mut bytes = vec![0xFD];
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(b"abc");
        assert!(codec::decode::<Vec<u8>>(&bytes).is_err(), "{len}");
        assert!(codec::decode::<String>(&bytes).is_err(), "{len}");
        assert!(codec::decode::<Vec<String>>(&bytes).is_err(), "{len}");
        let err = codec::decode_owned_prefix::<Vec<u8>>(&bytes).unwrap_err();
        assert!(err.message().contains(&len.to_string()), "{err}");
    }
}

/// Random text, and genuine ids with one character changed.
fn id_texts(genuine: String) -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9a-fA-F]{62,66}",
        (0..64usize, any::<char>()).prop_map(move |(at, c)| {
            let mut text: Vec<char> = genuine.chars().collect();
            text[at] = c;
            text.into_iter().collect()
        }),
    ]
}

/// The runtime whose namespace parses the ids under test.
async fn decoder_runtime() -> Runtime {
    Runtime::builder()
        .in_memory()
        .secret("a secret for the decoder tests")
        .host::<Counter>()
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn random_text_is_an_id_or_an_invalid_id_error_saying_why() {
    let rt = decoder_runtime().await;
    let counters = rt.namespace::<Counter>();
    let genuine = counters.id_from_name("alice");
    let mut runner = TestRunner::new(Config { failure_persistence: None, ..Config::default() });
    runner
        .run(&id_texts(genuine.to_string()), |text| {
            match counters.id_from_str(&text) {
                Ok(id) => {
                    prop_assert_eq!(id, genuine);
                    prop_assert_eq!(id.to_string(), text.to_ascii_lowercase());
                }
                Err(Error::InvalidId(message)) if message.len() > 1200 => {
                    prop_assert!(
                        false,
                        "a message of {} bytes for {} bytes of text",
                        message.len(),
                        text.len()
                    )
                }
                Err(Error::InvalidId(message)) => prop_assert!(
                    message.contains("an object id is 64 hex digits")
                        || message.contains("an object id is made of hex digits")
                        || message.contains("was not minted by the namespace of `Counter`"),
                    "{}",
                    message
                ),
                Err(other) => prop_assert!(false, "not an InvalidId: {:?}", other),
            }
            Ok(())
        })
        .unwrap();
    rt.shutdown().await.unwrap();
}

/// Found while writing these tests (bincode's decoder has no depth limit): each level
/// of a recursive type costs a frame of stack and as little as two bytes of
/// input, so a 2 MB argument (well within a frame) overflowed the stack and
/// aborted the process.
#[test]
fn deeply_nested_values_are_refused_without_overflowing_the_stack() {
    // `Value::List` is variant 4: each [4, 1] opens a list holding one more.
    let bytes: Vec<u8> = [4u8, 1].repeat(1_000_000);
    let err = codec::decode::<Value>(&bytes).unwrap_err();
    assert!(
        err.message().contains("nests deeper than the decoder's stack budget (262144 bytes) allows"),
        "{err}"
    );
    let mut args = ArgsReader::new("insert", &bytes);
    assert!(format!("{:?}", args.read::<Value>().unwrap_err()).contains("nests deeper"));
    // On a thread with a small stack too, such as a tokio worker's.
    let on_small_stack = std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(move || codec::decode::<Value>(&bytes).is_err())
        .unwrap();
    assert!(on_small_stack.join().unwrap());
}

#[test]
fn values_nested_some_dozens_of_levels_deep_still_decode() {
    let mut value = Value::Int(7);
    for _ in 0..64 {
        value = Value::List(vec![value]);
    }
    let bytes = codec::encode(&value).unwrap();
    assert_eq!(codec::decode::<Value>(&bytes).unwrap(), value);
}

/// Found while writing these tests: the message for a text of the wrong
/// length quoted the whole text, so a client sending a megabyte of text as
/// an id got (and a server logged) a megabyte of error, more with escapes.
#[tokio::test]
async fn a_huge_text_is_refused_with_a_short_message() {
    let rt = decoder_runtime().await;
    let counters = rt.namespace::<Counter>();
    for text in ["a".repeat(1 << 20), "\u{1}".repeat(1 << 20), "é".repeat(1 << 19)] {
        let message = counters.id_from_str(&text).unwrap_err().to_string();
        assert!(message.len() < 1200, "{} bytes", message.len());
        let chars = text.chars().count();
        assert!(message.contains(&format!("has {chars} characters")), "{message}");
    }
    rt.shutdown().await.unwrap();
}
