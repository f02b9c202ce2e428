//! Opaque random ids. Each kind has its own prefix so an id pasted in the wrong place is refused.

use rand::RngCore;
use std::fmt;
use std::str::FromStr;

macro_rules! random_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 16]);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn random() -> Self {
                let mut bytes = [0u8; 16];
                rand::thread_rng().fill_bytes(&mut bytes);
                $name(bytes)
            }
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = crate::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let bad = || crate::Error::invalid(concat!("malformed ", stringify!($name)));
                let hex_part = s.strip_prefix($prefix).ok_or_else(bad)?;
                // Lowercase only, so each id has exactly one spelling (and one directory).
                if hex_part.len() != 32 || !hex_part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(bad());
                }
                let mut bytes = [0u8; 16];
                hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| bad())?;
                Ok($name(bytes))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

random_id!(
    /// A user account.
    UserId, "usr_"
);
random_id!(
    /// One user's instance: the only handle that opens their data.
    InstanceId, "ins_"
);
random_id!(
    /// A registered third-party app; its OAuth `client_id`.
    AppId, "app_"
);
random_id!(
    /// One user's consent to one app.
    GrantId, "grt_"
);

impl InstanceId {
    /// The directory shard of this instance: two hex digits. Ids are uniformly random, so their
    /// first byte spreads instances evenly over 256 directories without hashing.
    pub fn shard(&self) -> String {
        hex::encode(&self.0[..1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_refuse_lookalikes() {
        let id = InstanceId::random();
        let text = id.to_string();
        assert!(text.starts_with("ins_") && text.len() == 36);
        assert_eq!(text.parse::<InstanceId>().unwrap(), id);
        assert_eq!(id.shard(), &text[4..6]);
        // Another kind's prefix, uppercase hex, path tricks and wrong lengths are all refused.
        assert!(text.replace("ins_", "usr_").parse::<InstanceId>().is_err());
        assert!(text.to_uppercase().parse::<InstanceId>().is_err());
        assert!("ins_../../../../etc/passwd0000000000".parse::<InstanceId>().is_err());
        assert!(format!("{text}0").parse::<InstanceId>().is_err());
        assert!("ins_".parse::<InstanceId>().is_err());
    }
}
