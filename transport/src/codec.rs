//! The one place where stead encodes values.
//!
//! Arguments, results and stored values are all encoded here, with
//! [bincode 2](https://docs.rs/bincode/2) through its `serde` support and its
//! standard configuration (little endian, variable-length integers). Keeping
//! the codec in one module means it can be swapped without touching anything
//! else.
//!
//! Note: bincode is no longer maintained upstream (RUSTSEC-2025-0141). The
//! format it writes is stable and the crate is pinned to 2.x; should a
//! replacement become necessary, this module is the only one to change (stored
//! values would then need a migration, which is why the format is not chosen
//! lightly).
//!
//! Decoding never trusts its input: a value may not claim more than
//! [`MAX_VALUE_SIZE`] bytes, may not nest deeper than [`MAX_DECODE_STACK`]
//! bytes of stack allow, and trailing bytes are an error, so a malformed or
//! hostile buffer yields a [`CodecError`] rather than a panic, a stack
//! overflow or a huge allocation. One thing is not bounded: a sequence of
//! values that encode as no bytes at all (`Vec<()>`, a set of unit structs)
//! may claim up to 2^64 elements in 9 bytes, and decoding it takes that many
//! steps. No message of stead's has such a sequence; argument and stored types
//! should not have one either.

use std::any::{Any, TypeId};

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest value the codec decodes, in bytes (64 MiB).
pub const MAX_VALUE_SIZE: usize = 64 * 1024 * 1024;

/// The most stack one decoding may use, in bytes (256 KiB).
///
/// Each level of a nested value (a recursive type: a tree, a list of lists)
/// takes a frame of the stack while it is decoded, and a thread that runs out
/// of stack aborts the whole process. Hostile bytes need only one or two bytes
/// per level, so without this budget an argument of a recursive type could
/// stop a node. A value nested deeper than the budget allows is refused with a
/// [`CodecError`]; that is some hundreds of levels in a debug build and more in
/// a release build, while threads have at least 2 MiB (tokio's workers).
pub const MAX_DECODE_STACK: usize = 256 * 1024;

type Config = Configuration<LittleEndian, Varint, Limit<MAX_VALUE_SIZE>>;

const fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_VALUE_SIZE>()
}

/// A value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CodecError {
    message: String,
}

impl CodecError {
    /// The human-readable reason.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Encodes `value` into a new buffer.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = new_buffer();
    encode_into(value, &mut buf)?;
    Ok(buf)
}

/// An empty buffer for encoding into, sized so that typical values (up to
/// a few hundred bytes) are written without growing it step by step.
pub fn new_buffer() -> Vec<u8> {
    Vec::with_capacity(128)
}

/// Appends the encoding of `value` to `buf`.
///
/// Values encoded one after another decode as the tuple of those values:
/// that is how the arguments of a method are encoded one by one.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_writer(value, Append(buf), config()).map_err(|e| CodecError {
        message: format!("could not encode a value of type `{}`: {e}", std::any::type_name::<T>()),
    })
}

/// Appends the encoding of `value`, like [`encode_into`], taking a shortcut
/// for `Vec<u8>`: serde hands a byte vector to the encoder one element at a
/// time, which costs a few nanoseconds per byte; the bytes written are the
/// same (a varint length, then the bytes).
pub fn encode_owned_into<T: Serialize + 'static>(value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    match (value as &dyn Any).downcast_ref::<Vec<u8>>() {
        Some(bytes) => {
            encode_into(&(bytes.len() as u64), buf)?;
            buf.extend_from_slice(bytes);
            Ok(())
        }
        None => encode_into(value, buf),
    }
}

/// Decodes a value from the start of `bytes`, like [`decode_prefix`],
/// taking the same shortcut as [`encode_owned_into`] for `Vec<u8>`.
pub fn decode_owned_prefix<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    if TypeId::of::<T>() != TypeId::of::<Vec<u8>>() {
        return decode_prefix(bytes);
    }
    // Errors name `T`, as on the ordinary path: the caller asked for a byte
    // vector, not for the integer that starts it.
    let refused = |why: String| CodecError {
        message: format!("could not decode a value of type `{}`: {why}", std::any::type_name::<T>()),
    };
    let (len, header) = decode_named::<u64>(bytes, std::any::type_name::<T>())?;
    let body = usize::try_from(len)
        .ok()
        .filter(|len| *len <= MAX_VALUE_SIZE)
        .and_then(|len| bytes.get(header..header.checked_add(len)?))
        .ok_or_else(|| refused(format!("it claims {len} bytes and {} are there", bytes.len() - header)))?;
    let mut decoded = Some(body.to_vec());
    let value = (&mut decoded as &mut dyn Any).downcast_mut::<Option<T>>().and_then(Option::take);
    // `T` is `Vec<u8>`, checked above, so the downcast cannot fail.
    value
        .map(|value| (value, header + body.len()))
        .ok_or_else(|| refused("a byte vector decoded as another type".into()))
}

/// A bincode writer that appends to a vector (cheaper per write than going
/// through `std::io::Write`, which matters for the byte-at-a-time writes of
/// serde sequences).
struct Append<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for Append<'_> {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        // Serde writes a `Vec<u8>` one element at a time: make that a push.
        match bytes {
            [byte] => self.0.push(*byte),
            _ => self.0.extend_from_slice(bytes),
        }
        Ok(())
    }
}

/// Decodes a value of type `T` from the start of `bytes`, returning it and
/// the number of bytes it took.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    decode_named(bytes, std::any::type_name::<T>())
}

/// Decodes a `T` from the start of `bytes`, naming `type_name` in errors.
fn decode_named<T: DeserializeOwned>(bytes: &[u8], type_name: &str) -> Result<(T, usize), CodecError> {
    let mut reader = StackBoundReader::new(bytes);
    match bincode::serde::decode_from_reader(&mut reader, config()) {
        Ok(value) => Ok((value, bytes.len() - reader.bytes.len())),
        Err(_) if reader.too_deep => Err(CodecError {
            message: format!(
                "could not decode a value of type `{type_name}`: it nests deeper than the \
                 decoder's stack budget ({MAX_DECODE_STACK} bytes) allows; the bytes are corrupt or \
                 hostile"
            ),
        }),
        Err(e) => Err(CodecError { message: format!("could not decode a value of type `{type_name}`: {e}") }),
    }
}

/// Reads a slice, like bincode's own slice reader, and refuses to read once
/// the decoder has gone deeper than [`MAX_DECODE_STACK`] below where decoding
/// started. Every level of a nested value reads at least its tag or length
/// before going deeper, so checking at each read bounds the depth.
struct StackBoundReader<'a> {
    bytes: &'a [u8],
    /// Where decoding started on the stack.
    base: usize,
    /// Whether a read was refused for going too deep.
    too_deep: bool,
}

impl<'a> StackBoundReader<'a> {
    #[inline(always)]
    fn new(bytes: &'a [u8]) -> Self {
        StackBoundReader { bytes, base: stack_position(), too_deep: false }
    }

    #[inline(always)]
    fn over_budget(&mut self) -> bool {
        // Stacks grow down on the platforms we run on; `abs_diff` is right
        // either way.
        self.too_deep |= self.base.abs_diff(stack_position()) > MAX_DECODE_STACK;
        self.too_deep
    }
}

/// The address of a local: where the stack is now.
#[inline(always)]
fn stack_position() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

impl bincode::de::read::Reader for StackBoundReader<'_> {
    #[inline(always)]
    fn read(&mut self, bytes: &mut [u8]) -> Result<(), bincode::error::DecodeError> {
        if self.over_budget() {
            return Err(bincode::error::DecodeError::Other("the value is nested too deeply"));
        }
        let Some((read, rest)) = self.bytes.split_at_checked(bytes.len()) else {
            return Err(bincode::error::DecodeError::UnexpectedEnd {
                additional: bytes.len() - self.bytes.len(),
            });
        };
        bytes.copy_from_slice(read);
        self.bytes = rest;
        Ok(())
    }

    #[inline(always)]
    fn peek_read(&mut self, n: usize) -> Option<&[u8]> {
        // Refusing to peek sends the decoder to `read`, which refuses.
        if self.over_budget() { None } else { self.bytes.get(..n) }
    }

    #[inline(always)]
    fn consume(&mut self, n: usize) {
        self.bytes = self.bytes.get(n..).unwrap_or_default();
    }
}

/// Decodes a value of type `T` that must fill `bytes` exactly.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, read) = decode_prefix(bytes)?;
    if read != bytes.len() {
        let type_name = std::any::type_name::<T>();
        return Err(CodecError {
            message: format!(
                "could not decode a value of type `{type_name}`: {} trailing bytes after the value",
                bytes.len() - read
            ),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_tuple_of_arguments() {
        let bytes = encode(&(7u64, "seven".to_string())).unwrap();
        let back: (u64, String) = decode(&bytes).unwrap();
        assert_eq!(back, (7, "seven".to_string()));
    }

    #[test]
    fn borrowed_and_owned_arguments_encode_alike() {
        let owned = encode(&(String::from("a"), 1u8)).unwrap();
        let borrowed = encode(&(&String::from("a"), &1u8)).unwrap();
        assert_eq!(owned, borrowed);
    }

    #[test]
    fn values_encoded_one_by_one_decode_as_a_tuple() {
        let mut buf = Vec::new();
        encode_into(&7u64, &mut buf).unwrap();
        encode_into("seven", &mut buf).unwrap();
        assert_eq!(buf, encode(&(7u64, "seven")).unwrap());
        let (first, used) = decode_prefix::<u64>(&buf).unwrap();
        assert_eq!(first, 7);
        assert_eq!(decode::<String>(&buf[used..]).unwrap(), "seven");
    }

    #[test]
    fn the_byte_vector_shortcut_writes_and_reads_the_same_bytes() {
        for len in [0usize, 1, 100, 250, 251, 70_000] {
            let value: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut fast = vec![9u8];
            encode_owned_into(&value, &mut fast).unwrap();
            let mut slow = vec![9u8];
            encode_into(&value, &mut slow).unwrap();
            assert_eq!(fast, slow, "len {len}");
            let (back, used) = decode_owned_prefix::<Vec<u8>>(&fast[1..]).unwrap();
            assert_eq!((back, used), (value, fast.len() - 1));
        }
        // Other types take the ordinary path.
        let mut buf = Vec::new();
        encode_owned_into(&(1u32, "x".to_string()), &mut buf).unwrap();
        assert_eq!(decode_owned_prefix::<(u32, String)>(&buf).unwrap().0, (1, "x".to_string()));
    }

    #[test]
    fn a_byte_vector_claiming_more_than_is_there_is_refused() {
        let mut buf = Vec::new();
        encode_into(&1000u64, &mut buf).unwrap();
        buf.extend_from_slice(&[1, 2, 3]);
        let err = decode_owned_prefix::<Vec<u8>>(&buf).unwrap_err();
        assert!(err.message().contains("1000"), "{err}");
        encode_into(&u64::MAX, &mut buf).unwrap();
        assert!(decode_owned_prefix::<Vec<u8>>(&buf[buf.len() - 9..]).is_err());
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = encode(&1u32).unwrap();
        bytes.push(0);
        let err = decode::<u32>(&bytes).unwrap_err();
        assert!(err.message().contains("trailing"), "{err}");
    }

    #[test]
    fn a_huge_claimed_length_is_refused_without_allocating() {
        // A varint length prefix claiming u64::MAX bytes.
        let bytes = [0xFFu8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(decode::<Vec<u8>>(&bytes).is_err());
    }
}
