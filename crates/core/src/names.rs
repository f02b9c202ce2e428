//! Collection and record-key names, validated once at the edge into types.
//!
//! Grammar (the HTTP contract): collection `[a-z0-9][a-z0-9._-]{0,63}`; key 1..512 bytes of
//! `[A-Za-z0-9._~:@-]`, and neither `.` nor `..` (clients and proxies rewrite those path segments).

use crate::Error;
use std::fmt;

/// A validated collection name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Collection(String);

/// A validated record key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey(String);

pub const MAX_COLLECTION_LEN: usize = 64;
pub const MAX_KEY_LEN: usize = 512;

fn is_collection_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-')
}

fn is_key_byte(b: u8) -> bool {
    matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'~' | b':' | b'@' | b'-')
}

/// True when `s` may start a collection name (also used by scope patterns, which may be empty).
pub(crate) fn is_collection_prefix(s: &str) -> bool {
    s.len() <= MAX_COLLECTION_LEN
        && s.bytes().all(is_collection_byte)
        && s.bytes().next().is_none_or(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl Collection {
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.is_empty() || !is_collection_prefix(s) {
            return Err(Error::invalid("collection must match [a-z0-9][a-z0-9._-]{0,63}"));
        }
        Ok(Collection(s.to_owned()))
    }
    /// A collection of the instance's own parts (the token ledger, the assistant's memories): its
    /// name starts with `_`, which no name a client gives may, so no API path or scope reaches it.
    /// It lives in the user's store like any record: sealed, counted in the quota, exported.
    pub fn internal(name: &str) -> Self {
        assert!(!name.is_empty() && is_collection_prefix(name) && name.len() < MAX_COLLECTION_LEN, "{name}");
        Collection(format!("_{name}"))
    }

    /// A name read back from the store or an archive: a client's name, or an internal one.
    pub fn parse_stored(s: &str) -> Result<Self, Error> {
        match s.strip_prefix('_') {
            Some(rest) if !rest.is_empty() && is_collection_prefix(rest) && s.len() <= MAX_COLLECTION_LEN => {
                Ok(Collection(s.to_owned()))
            }
            _ => Self::parse(s),
        }
    }

    /// True for a collection of the instance's own parts ([`Collection::internal`]).
    pub fn is_internal(&self) -> bool {
        self.0.starts_with('_')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl RecordKey {
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.is_empty() || s.len() > MAX_KEY_LEN || !s.bytes().all(is_key_byte) {
            return Err(Error::invalid("key must be 1..512 bytes of [A-Za-z0-9._~:@-]"));
        }
        if s == "." || s == ".." {
            return Err(Error::invalid("key must not be '.' or '..'"));
        }
        Ok(RecordKey(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A key prefix for listing: the key grammar, but empty is allowed and dots are not special.
pub fn validate_key_prefix(s: &str) -> Result<(), Error> {
    if s.len() > MAX_KEY_LEN || !s.bytes().all(is_key_byte) {
        return Err(Error::invalid("prefix must be up to 512 bytes of [A-Za-z0-9._~:@-]"));
    }
    Ok(())
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(&self.0) }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { fmt::Debug::fmt(&self.0, f) }
        }
    )*};
}
display_as_str!(Collection, RecordKey);

// Serde for the names instance runtimes exchange; deserializing checks the grammar again, so a
// name from the other end of a socket is as trusted as one parsed here.
macro_rules! serde_as_str {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                <$t>::parse(&s).map_err(|e| serde::de::Error::custom(e.message))
            }
        }
    )*};
}
serde_as_str!(Collection, RecordKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collections_follow_the_grammar() {
        for ok in ["notes", "a", "0x", "my.notes_v2-beta", &"a".repeat(64)] {
            assert!(Collection::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Notes", "_notes", ".hidden", "a/b", "..", "a\0b", "no tes", "é", &"a".repeat(65)] {
            assert!(Collection::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn internal_collections_are_out_of_every_client_name() {
        let ledger = Collection::internal("llm-usage");
        assert_eq!(ledger.as_str(), "_llm-usage");
        assert!(ledger.is_internal() && !Collection::parse("notes").unwrap().is_internal());
        // No client can name it; the store and archives read it back.
        assert!(Collection::parse(ledger.as_str()).is_err());
        assert_eq!(Collection::parse_stored(ledger.as_str()).unwrap(), ledger);
        assert_eq!(Collection::parse_stored("notes").unwrap().as_str(), "notes");
        for bad in ["_", "__x", "_X", "_a/b", &format!("_{}", "a".repeat(64))] {
            assert!(Collection::parse_stored(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_follow_the_grammar() {
        for ok in ["k", "user@example.com", "2026-11-25T10:00:00Z", "a~b", "...", &"k".repeat(512)] {
            assert!(RecordKey::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a\\b", "%2F", "a\0", "a b", "ключ", &"k".repeat(513)] {
            assert!(RecordKey::parse(bad).is_err(), "{bad:?}");
        }
    }
}
