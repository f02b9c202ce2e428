//! The account recovery code: 160 random bits the user writes down at sign-up. It is never
//! stored; a key derived from it (HKDF-SHA256, own salt) wraps the data key in `keys.json`, so
//! the code alone can unwrap the key and set a new password.
//!
//! Unlike a password, the code is uniformly random: 160 bits leave nothing for a slow KDF to
//! protect, so sign-up pays the deliberate Argon2id cost once (for the password), not twice.

use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

/// Crockford's base32: no I, L, O or U, so a code read aloud or copied by hand is unambiguous.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const BYTES: usize = 20;
/// 160 bits at 5 bits a character.
const CHARS: usize = BYTES * 8 / 5;
const GROUP: usize = 4;

/// A recovery code in canonical form (32 characters of the alphabet, no separators).
pub struct RecoveryCode(Zeroizing<String>);

impl RecoveryCode {
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; BYTES]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        let mut out = Zeroizing::new(String::with_capacity(CHARS));
        for i in 0..CHARS {
            // The i-th 5-bit group, big-endian across the bytes.
            let bit = i * 5;
            let pair = (u16::from(bytes[bit / 8]) << 8) | u16::from(*bytes.get(bit / 8 + 1).unwrap_or(&0));
            let v = (pair >> (11 - bit % 8)) & 0x1f;
            out.push(ALPHABET[usize::from(v)] as char);
        }
        RecoveryCode(out)
    }

    /// Reads a code as a person may type it: any case, with or without dashes and spaces, and
    /// with the look-alikes O, I and L read as 0, 1 and 1. `None` if it cannot be a code.
    pub fn parse(input: &str) -> Option<Self> {
        let mut out = Zeroizing::new(String::with_capacity(CHARS));
        for c in input.chars() {
            let c = match c.to_ascii_uppercase() {
                '-' | ' ' => continue,
                'O' => '0',
                'I' | 'L' => '1',
                c => c,
            };
            if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) || out.len() == CHARS {
                return None;
            }
            out.push(c);
        }
        (out.len() == CHARS).then_some(RecoveryCode(out))
    }

    /// The form shown to the user: groups of four joined by dashes.
    pub fn display(&self) -> String {
        let chunks: Vec<&str> =
            self.0.as_bytes().chunks(GROUP).map(|c| std::str::from_utf8(c).expect("ASCII")).collect();
        chunks.join("-")
    }

    /// The key-encryption key of this code. A wrong code shows itself by failing to unwrap.
    pub fn derive(&self, salt: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut kek = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(salt), self.0.as_bytes())
            .expand(b"selfcloud recovery code kek v1", kek.as_mut())
            .expect("32 bytes is a valid HKDF length");
        kek
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_grouped_random_and_read_back_leniently() {
        let code = RecoveryCode::generate();
        let shown = code.display();
        assert_eq!(shown.len(), CHARS + CHARS / GROUP - 1);
        assert_eq!(shown.split('-').count(), CHARS / GROUP);
        assert!(shown.bytes().all(|b| b == b'-' || ALPHABET.contains(&b)), "{shown}");
        assert_ne!(RecoveryCode::generate().display(), shown);

        let again = RecoveryCode::parse(&shown.to_lowercase().replace('-', " ")).unwrap();
        assert_eq!(again.display(), shown);
        let look_alikes = RecoveryCode::parse(&"OIL0".repeat(8)).unwrap();
        assert_eq!(look_alikes.display(), ["0110"; 8].join("-"));
        for bad in ["", "ABCD", &"A".repeat(33), &"U".repeat(32), &"é".repeat(32)] {
            assert!(RecoveryCode::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn every_character_carries_five_fresh_bits() {
        // Over many codes every symbol appears in every position, the last included.
        let mut seen = [[false; 32]; CHARS];
        for _ in 0..2000 {
            for (i, b) in RecoveryCode::generate().0.bytes().enumerate() {
                seen[i][ALPHABET.iter().position(|&a| a == b).unwrap()] = true;
            }
        }
        assert!(seen.iter().all(|pos| pos.iter().all(|&s| s)));
    }
}
