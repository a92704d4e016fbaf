//! Object ids: how an object is named, and how a forged name is refused.
//!
//! An [`ObjectId`] is 32 bytes: 16 bytes of *identity* followed by a 16-byte
//! MAC over that identity. The identity is random for
//! [`Namespace::unique_id`](crate::Namespace::unique_id) and a keyed hash of
//! the name for [`Namespace::id_from_name`](crate::Namespace::id_from_name).
//! The MAC is keyed by a per-namespace key derived from the cluster secret and
//! the object type's name, so an id minted by one namespace (or one cluster) is
//! refused by every other, and an id cannot be guessed from outside.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const IDENTITY_LEN: usize = 16;
const MAC_LEN: usize = 16;
/// Length of an id in bytes.
const ID_LEN: usize = IDENTITY_LEN + MAC_LEN;
/// Length of an id's text form in hex digits.
const HEX_LEN: usize = ID_LEN * 2;

/// The address of one durable object within its namespace.
///
/// Ids are minted by a [`Namespace`](crate::Namespace) (`unique_id`,
/// `id_from_name`) or parsed back from their text form with
/// [`Namespace::id_from_str`](crate::Namespace::id_from_str), which checks
/// that the id belongs to that namespace. Their `Display` form is 64
/// lowercase hex digits, safe to hand to a client and to take back later.
///
/// `FromStr` is not implemented on purpose: only a namespace can tell whether
/// an id is genuine.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectId([u8; ID_LEN]);

impl ObjectId {
    /// The 32 bytes of the id.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The id whose bytes are `bytes`, if there are 32 of them (unchecked).
    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(ObjectId)
    }

    fn identity(&self) -> &[u8] {
        &self.0[..IDENTITY_LEN]
    }

    fn mac(&self) -> &[u8] {
        &self.0[IDENTITY_LEN..]
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

/// The keys with which one namespace mints and checks its ids.
#[derive(Clone)]
pub(crate) struct IdKeys {
    type_name: &'static str,
    name_key: [u8; 32],
    mac_key: [u8; 32],
}

impl IdKeys {
    /// Derives the keys of the namespace of `type_name` from the cluster secret.
    pub(crate) fn derive(secret: &[u8; 32], type_name: &'static str) -> Self {
        let mut material = Vec::with_capacity(32 + type_name.len());
        material.extend_from_slice(secret);
        material.extend_from_slice(type_name.as_bytes());
        let namespace_key = blake3::derive_key("stead 2026 namespace key", &material);
        IdKeys {
            type_name,
            name_key: blake3::derive_key("stead 2026 id from name", &namespace_key),
            mac_key: blake3::derive_key("stead 2026 id mac", &namespace_key),
        }
    }

    /// A fresh id with a random identity.
    pub(crate) fn unique_id(&self) -> ObjectId {
        let mut identity = [0u8; IDENTITY_LEN];
        // The OS random source failing is not recoverable and not caused by input.
        getrandom::fill(&mut identity).expect("the operating system's random source failed");
        self.seal(identity)
    }

    /// The id named `name`: the same name always gives the same id.
    pub(crate) fn id_from_name(&self, name: &str) -> ObjectId {
        let hash = blake3::keyed_hash(&self.name_key, name.as_bytes());
        let mut identity = [0u8; IDENTITY_LEN];
        identity.copy_from_slice(&hash.as_bytes()[..IDENTITY_LEN]);
        self.seal(identity)
    }

    /// Parses the text form of an id and checks that this namespace minted it.
    pub(crate) fn parse(&self, text: &str) -> Result<ObjectId> {
        let id = parse_hex(text)?;
        self.verify(&id)?;
        Ok(id)
    }

    /// Checks that this namespace minted `id`.
    pub(crate) fn verify(&self, id: &ObjectId) -> Result<()> {
        let expected = self.mac(id.identity());
        // Constant-time comparison, so that a MAC cannot be found byte by byte.
        let diff = expected.iter().zip(id.mac()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err(Error::InvalidId(format!(
                "`{id}` was not minted by the namespace of `{}` in this cluster; ids belong to one \
                 object type and one cluster secret, so mint it with this namespace's \
                 `unique_id` or `id_from_name`",
                self.type_name
            )))
        }
    }

    fn seal(&self, identity: [u8; IDENTITY_LEN]) -> ObjectId {
        let mut bytes = [0u8; ID_LEN];
        bytes[..IDENTITY_LEN].copy_from_slice(&identity);
        bytes[IDENTITY_LEN..].copy_from_slice(&self.mac(&identity));
        ObjectId(bytes)
    }

    fn mac(&self, identity: &[u8]) -> [u8; MAC_LEN] {
        let hash = blake3::keyed_hash(&self.mac_key, identity);
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&hash.as_bytes()[..MAC_LEN]);
        mac
    }
}

/// Parses 64 hex digits (either case) into an id, without checking its MAC.
fn parse_hex(text: &str) -> Result<ObjectId> {
    let len = text.chars().count();
    if len != HEX_LEN {
        return Err(Error::InvalidId(format!(
            "an object id is {HEX_LEN} hex digits, but {} has {len} characters",
            quote_start(text)
        )));
    }
    if let Some((position, bad)) = text.chars().enumerate().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(Error::InvalidId(format!(
            "an object id is made of hex digits 0-9 and a-f, but {text:?} has {bad:?} at position \
             {position}"
        )));
    }
    // Length and digits were checked above, so decoding cannot fail.
    decode_hex(text).map(ObjectId).ok_or_else(|| Error::InvalidId(format!("{text:?} is not hex")))
}

/// `text` quoted for an error message, cut after a hundred characters: the
/// text may come from anyone, and a megabyte of it should not make a
/// megabyte of error (or of log).
fn quote_start(text: &str) -> String {
    const SHOWN: usize = 100;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}

/// Decodes 64 hex digits (either case) into 32 bytes.
pub(crate) fn decode_hex(text: &str) -> Option<[u8; ID_LEN]> {
    if text.len() != HEX_LEN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut bytes = [0u8; ID_LEN];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(name: &'static str) -> IdKeys {
        IdKeys::derive(&[7u8; 32], name)
    }

    #[test]
    fn display_is_64_lowercase_hex_digits_and_parses_back() {
        let k = keys("Counter");
        let id = k.unique_id();
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert!(text.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_eq!(k.parse(&text).unwrap(), id);
        assert_eq!(k.parse(&text.to_uppercase()).unwrap(), id);
        assert_eq!(parse_hex(&text).unwrap(), id);
    }

    #[test]
    fn names_give_stable_distinct_ids() {
        let k = keys("Counter");
        assert_eq!(k.id_from_name("alice"), k.id_from_name("alice"));
        assert_ne!(k.id_from_name("alice"), k.id_from_name("bob"));
        assert_ne!(k.id_from_name("alice"), keys("Room").id_from_name("alice"));
    }

    #[test]
    fn each_malformation_has_its_own_message() {
        let k = keys("Counter");
        let short = k.parse("abc").unwrap_err().to_string();
        assert!(short.contains("64 hex digits"), "{short}");
        let bad = format!("{}g", "0".repeat(63));
        let nonhex = k.parse(&bad).unwrap_err().to_string();
        assert!(nonhex.contains("position 63"), "{nonhex}");
        let foreign = keys("Room").unique_id().to_string();
        let mac = k.parse(&foreign).unwrap_err().to_string();
        assert!(mac.contains("not minted by the namespace of `Counter`"), "{mac}");
    }

    #[test]
    fn multibyte_input_is_refused_without_panicking() {
        let k = keys("Counter");
        let text = "é".repeat(32);
        assert!(k.parse(&text).is_err());
        let text = format!("{}é", "0".repeat(63));
        assert!(k.parse(&text).is_err());
    }
}
