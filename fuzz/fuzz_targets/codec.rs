//! The codec's decoding (`stead_transport::codec`), which reads every
//! argument, result and stored value.
//!
//! Two kinds of input: arbitrary bytes, decoded as many types with every
//! decoding function (none may panic, and they must agree with each other:
//! `decode` with `decode_prefix`, the `Vec<u8>` shortcut of
//! `decode_owned_prefix` with the ordinary path); and arbitrary values, which
//! must come back unchanged from encoding and decoding, by every path.

#![no_main]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use stead::__private::ArgsReader;
use stead::{Error, ObjectId};
use stead_transport::codec;

#[derive(Arbitrary, Debug)]
enum Input {
    Bytes(Vec<u8>),
    Value(Value),
    Arguments(u64, Vec<u8>, Value, String),
    Outcome(Result<Vec<u8>, (u8, String)>),
}

/// A value of many shapes, nested: the kind of argument users pass.
#[derive(Arbitrary, Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Value {
    Unit,
    Bool(bool),
    Int(i64),
    Big(u128),
    Char(char),
    Text(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
    Pair(Box<Value>, Box<Value>),
    Record { id: [u8; 32], maybe: Option<Box<Value>>, took: Duration, small: (u8, i16, u32) },
}

fuzz_target!(|input: Input| match input {
    Input::Bytes(bytes) => decode_everything(&bytes),
    Input::Value(value) => {
        round_trip(&value, value.depth());
        round_trip(&vec![value.clone(), value.clone()], value.depth() + 1);
    }
    Input::Arguments(first, second, third, fourth) => arguments(first, second, third, fourth),
    Input::Outcome(outcome) => {
        let outcome = outcome.map_err(|(kind, message)| error(kind, message));
        round_trip(&outcome, 1);
    }
});

impl Value {
    /// How many levels deep the value nests.
    fn depth(&self) -> usize {
        1 + match self {
            Value::List(items) => items.iter().map(Value::depth).max().unwrap_or(0),
            Value::Map(items) => items.values().map(Value::depth).max().unwrap_or(0),
            Value::Pair(a, b) => a.depth().max(b.depth()),
            Value::Record { maybe, .. } => maybe.as_ref().map_or(0, |v| v.depth()),
            _ => 0,
        }
    }
}

/// Whether `err` is the refusal of a value too deep for the decoder's stack
/// budget, for a value `depth` levels deep: never below 64 levels (a debug
/// build decodes those), always with its own message.
fn refused_as_too_deep(err: &codec::CodecError, depth: usize) -> bool {
    depth > 64 && err.message().contains("nests deeper than the decoder's stack budget")
}

fn decode_everything(bytes: &[u8]) {
    decodes::<()>(bytes);
    decodes::<bool>(bytes);
    decodes::<u8>(bytes);
    decodes::<u16>(bytes);
    decodes::<u32>(bytes);
    decodes::<u64>(bytes);
    decodes::<u128>(bytes);
    decodes::<i64>(bytes);
    decodes::<i128>(bytes);
    decodes::<f32>(bytes);
    decodes::<f64>(bytes);
    decodes::<char>(bytes);
    decodes::<String>(bytes);
    decodes::<Box<str>>(bytes);
    decodes::<Vec<u8>>(bytes);
    decodes::<[u8; 32]>(bytes);
    decodes::<Vec<u64>>(bytes);
    decodes::<Vec<String>>(bytes);
    decodes::<Option<Vec<u8>>>(bytes);
    decodes::<(u32, String, Vec<u8>)>(bytes);
    decodes::<BTreeMap<String, Vec<u8>>>(bytes);
    decodes::<HashMap<u64, String>>(bytes);
    decodes::<Duration>(bytes);
    decodes::<SystemTime>(bytes);
    decodes::<SocketAddr>(bytes);
    decodes::<ObjectId>(bytes);
    decodes::<Error>(bytes);
    decodes::<Result<Vec<u8>, Error>>(bytes);
    decodes::<Value>(bytes);

    // The byte-vector shortcut reads what the ordinary path reads.
    let fast = codec::decode_owned_prefix::<Vec<u8>>(bytes);
    let slow = codec::decode_prefix::<Vec<u8>>(bytes);
    match (&fast, &slow) {
        (Ok(fast), Ok(slow)) => assert_eq!(fast, slow),
        (Err(err), Err(_)) => assert!(!err.message().is_empty()),
        _ => panic!("the shortcut and the ordinary path disagree: {fast:?} and {slow:?}"),
    }
    let owned = codec::decode_owned_prefix::<(u64, String)>(bytes).ok();
    assert_eq!(owned, codec::decode_prefix::<(u64, String)>(bytes).ok());

    // Arguments as a node reads them for a method.
    let mut args = ArgsReader::new("fuzzed", bytes);
    let read = args.read::<u64>().and_then(|_| args.read::<Vec<u8>>()).and_then(|_| args.read::<Value>());
    if read.is_ok() {
        let _ = args.finish();
    }
}

/// Decodes `bytes` as a `T` with each function; checks they agree and that
/// a refusal names the type.
fn decodes<T: DeserializeOwned + Serialize + Debug + 'static>(bytes: &[u8]) {
    let whole = codec::decode::<T>(bytes);
    let prefix = codec::decode_prefix::<T>(bytes);
    match (&whole, &prefix) {
        (Ok(_), Ok((_, used))) => assert_eq!(*used, bytes.len()),
        (Err(err), Ok((_, used))) => {
            assert!(*used < bytes.len());
            assert!(err.message().contains("trailing bytes"), "{err}");
        }
        (Err(err), Err(_)) => {
            assert!(err.message().starts_with("could not decode a value of type"), "{err}")
        }
        (Ok(_), Err(err)) => panic!("`decode` accepted what `decode_prefix` refused: {err}"),
    }
    if let Ok((value, used)) = prefix {
        assert!(used <= bytes.len());
        // What was decoded encodes again (not always to the same bytes:
        // the format accepts lengths written longer than needed).
        codec::encode(&value).expect("a decoded value encodes");
    }
}

/// Encodes `value` (`depth` levels deep) by every path and checks that it
/// decodes back.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug + 'static>(value: &T, depth: usize) {
    let bytes = codec::encode(value).expect("encodes");
    let mut appended = vec![0xAB];
    codec::encode_owned_into(value, &mut appended).expect("encodes");
    assert_eq!(&appended[1..], &bytes[..]);
    match codec::decode::<T>(&bytes) {
        Ok(back) => assert_eq!(&back, value),
        Err(err) => {
            assert!(refused_as_too_deep(&err, depth), "{err}");
            return;
        }
    }
    let (back, used) = codec::decode_owned_prefix::<T>(&appended[1..]).expect("decodes");
    assert_eq!((&back, used), (value, bytes.len()));
}

/// Arguments written one by one, as a stub writes them, and read back one by
/// one, as the node reads them.
fn arguments(first: u64, second: Vec<u8>, third: Value, fourth: String) {
    let mut buf = codec::new_buffer();
    codec::encode_owned_into(&first, &mut buf).unwrap();
    codec::encode_owned_into(&second, &mut buf).unwrap();
    codec::encode_owned_into(&third, &mut buf).unwrap();
    codec::encode_owned_into(&fourth, &mut buf).unwrap();
    assert_eq!(buf, codec::encode(&(&first, &second, &third, &fourth)).unwrap());
    let mut args = ArgsReader::new("fuzzed", &buf);
    assert_eq!(args.read::<u64>().unwrap(), first);
    assert_eq!(args.read::<Vec<u8>>().unwrap(), second);
    match args.read::<Value>() {
        Ok(value) => assert_eq!(value, third),
        Err(err) => {
            let too_deep = codec::decode::<Value>(&codec::encode(&third).unwrap()).unwrap_err();
            assert!(refused_as_too_deep(&too_deep, third.depth()), "{err:?}");
            return;
        }
    }
    assert_eq!(args.read::<String>().unwrap(), fourth);
    args.finish().unwrap();
    // One argument short: `finish` must refuse the extra bytes.
    let mut args = ArgsReader::new("fuzzed", &buf);
    args.read::<u64>().unwrap();
    args.read::<Vec<u8>>().unwrap();
    args.read::<Value>().unwrap();
    assert!(args.finish().is_err());
}

fn error(kind: u8, message: String) -> Error {
    match kind % 13 {
        0 => Error::InvalidId(message),
        1 => Error::NotHosted(message),
        2 => Error::ConstructorFailed(message),
        3 => Error::Panicked(message),
        4 => Error::Overloaded(message),
        5 => Error::Disconnected(message),
        6 => Error::Unavailable(message),
        7 => Error::Timeout(message),
        8 => Error::Storage(message),
        9 => Error::Codec(message),
        10 => Error::Incompatible(message),
        11 => Error::Transport(message),
        _ => Error::Config(message),
    }
}
