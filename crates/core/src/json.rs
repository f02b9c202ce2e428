//! What counts as a JSON value here: what standard parsers take back. Syntax alone is not
//! enough: a value nested 100,000 deep, a number like `1e99999` or a lone surrogate escape
//! (`"\ud800"`) is valid JSON text that serde_json's `Value`, the SDK and most languages' parsers
//! refuse, so one stored record would break every list that holds it. Checked without building
//! the value: a visitor that looks at each part and keeps nothing.

use crate::Error;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Nesting deeper than this is refused (serde_json's own limit for `Value`).
pub const MAX_DEPTH: usize = 128;

struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Checked, E> {
        if v.is_finite() {
            Ok(Checked)
        } else {
            Err(E::custom("number out of range"))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

/// `Ok` if `text` is one JSON value that standard parsers read back: syntax, at most
/// [`MAX_DEPTH`] levels, finite numbers, valid string escapes, nothing after it.
pub fn check_value(text: &str) -> Result<(), Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    Checked::deserialize(&mut de).and_then(|_| de.end()).map_err(|e| Error::invalid(format!("not a JSON value: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_standard_parsers_take_and_nothing_else() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        for ok in [
            "1",
            "-2.5e3",
            "\"caf\\u00e9 \\ud83d\\ude00\"",
            "null",
            "{\"a\":[1,{\"b\":true}]}",
            " [ ] ",
            &deep(MAX_DEPTH - 1),
        ] {
            assert!(check_value(ok).is_ok(), "{ok}");
            // The same rules as serde_json's own Value, which the SDK parses lists into.
            assert!(serde_json::from_str::<serde_json::Value>(ok).is_ok(), "{ok}");
        }
        for bad in ["1e99999", "-1e400", "\"\\ud800\"", "\"\\udc00x\"", "[1,]", "{} {}", "", &deep(200), &deep(100_000)]
        {
            assert!(check_value(bad).is_err(), "{}", &bad[..bad.len().min(40)]);
            assert!(serde_json::from_str::<serde_json::Value>(bad).is_err(), "{}", &bad[..bad.len().min(40)]);
        }
    }
}
