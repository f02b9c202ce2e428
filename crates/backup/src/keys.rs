//! The backup key and how a target keeps it: a random key per instance, stored at the target
//! only wrapped, once under the user's backup passphrase (Argon2id) and once under a recovery
//! key shown to the user once. Either opens the target alone: nothing from the server's home
//! (its node key, the instance's key file) is needed, so a user who lost the whole server can
//! still restore. Every other key of a target is derived from the backup key.

use hkdf::Hkdf;
use rand::RngCore;
use selfcloud_core::{Error, Result};
use selfcloud_store::{DataKey, Sealer};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The shortest backup passphrase accepted: it alone guards the backup wherever it is kept.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

const WRAP_AAD: &[u8] = b"selfcloud backup key v1";
const KEY_OBJECT_VERSION: u8 = 1;

/// An instance's backup key. Zeroed when dropped; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct BackupKey([u8; 32]);

impl BackupKey {
    pub fn generate() -> Self {
        BackupKey(random())
    }

    /// The key as the instance keeps it (in its sealed store) and reads it back.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0))
    }

    pub fn from_hex(text: &str) -> Result<BackupKey> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(text, &mut key).map_err(|_| Error::internal("a kept backup key is not 64 hex digits"))?;
        Ok(BackupKey(key))
    }

    fn derive(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(None, &self.0).expand(purpose.as_bytes(), out.as_mut()).expect("32 bytes");
        out
    }

    /// The cipher of every object the target holds.
    pub(crate) fn sealer(&self) -> Sealer {
        Sealer::new(&DataKey::from_bytes(*self.derive("selfcloud backup: objects v1")))
    }

    /// The key of chunk ids: a keyed hash, so equal chunks dedupe while an id tells the target
    /// nothing (no guessing a chunk by hashing candidates).
    pub(crate) fn chunk_ids(&self) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.derive("selfcloud backup: chunk ids v1").as_ref())
    }
}

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupKey(..)")
    }
}

/// The key shown to the user once, when backup is set up: it opens the target if the
/// passphrase is forgotten. Written as 16 groups of 4 hex digits.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct RecoveryKey([u8; 32]);

impl RecoveryKey {
    pub fn generate() -> Self {
        RecoveryKey(random())
    }
}

impl std::fmt::Display for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = Zeroizing::new(hex::encode(self.0));
        let groups: Vec<&str> = (0..16).map(|i| &digits[i * 4..i * 4 + 4]).collect();
        f.write_str(&groups.join("-"))
    }
}

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKey(..)")
    }
}

impl std::str::FromStr for RecoveryKey {
    type Err = Error;
    /// Dashes, spaces and case are the user's to choose.
    fn from_str(text: &str) -> Result<Self> {
        let digits: Zeroizing<String> =
            Zeroizing::new(text.chars().filter(|c| !matches!(c, '-' | ' ' | '\t' | '\n')).collect());
        let mut key = [0u8; 32];
        hex::decode_to_slice(digits.as_bytes(), &mut key)
            .map_err(|_| Error::invalid("a recovery key is 64 hex digits (in groups of four)"))?;
        Ok(RecoveryKey(key))
    }
}

/// What a user gives to open a target.
#[derive(Clone)]
pub enum Secret {
    Passphrase(Zeroizing<String>),
    RecoveryKey(RecoveryKey),
}

impl Secret {
    pub fn passphrase(text: &str) -> Secret {
        Secret::Passphrase(Zeroizing::new(text.to_owned()))
    }
}

/// Argon2id's cost for a passphrase wrap: a setting, recorded in each wrap so a later change
/// opens old ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfCost {
    pub memory_kib: u32,
    pub iterations: u32,
}

impl Default for KdfCost {
    /// 32 MiB and 4 passes, one lane: above OWASP's floor (19 MiB, 2 passes), and within what
    /// the smallest instance may allocate beside its store.
    fn default() -> Self {
        KdfCost { memory_kib: 32 * 1024, iterations: 4 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum WrapKind {
    Passphrase,
    Recovery,
}

/// One wrap of the backup key, as the target stores it (`keys/<random>`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct KeyObject {
    pub v: u8,
    pub kind: WrapKind,
    pub salt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<KdfCost>,
    pub wrapped: String,
}

/// Checks a new passphrase before anything is written under it.
pub fn check_passphrase(passphrase: &str) -> Result<()> {
    if passphrase.chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(Error::invalid(format!("a backup passphrase has at least {MIN_PASSPHRASE_CHARS} characters")));
    }
    Ok(())
}

/// The backup key wrapped under `secret`.
pub(crate) fn wrap(key: &BackupKey, secret: &Secret, cost: KdfCost) -> Result<KeyObject> {
    let salt: [u8; 16] = random();
    let (kind, cost) = match secret {
        Secret::Passphrase(p) => {
            check_passphrase(p)?;
            (WrapKind::Passphrase, Some(cost))
        }
        Secret::RecoveryKey(_) => (WrapKind::Recovery, None),
    };
    let kek = key_encryption_key(secret, &salt, cost)?;
    let wrapped = kek.seal(WRAP_AAD, &key.0)?;
    Ok(KeyObject { v: KEY_OBJECT_VERSION, kind, salt: hex::encode(salt), cost, wrapped: hex::encode(wrapped) })
}

/// The costliest wrap tried: a target is not trusted to name the work (or memory) it takes.
const MAX_KDF: KdfCost = KdfCost { memory_kib: 1 << 20, iterations: 16 };

/// The backup key, if `secret` is the one this wrap was made under; `None` if it is another,
/// or not a wrap this version reads (a target may hold anything: the other wraps are tried).
pub(crate) fn unwrap(object: &KeyObject, secret: &Secret) -> Result<Option<BackupKey>> {
    let kind = match secret {
        Secret::Passphrase(_) => WrapKind::Passphrase,
        Secret::RecoveryKey(_) => WrapKind::Recovery,
    };
    if object.v != KEY_OBJECT_VERSION || object.kind != kind {
        return Ok(None);
    }
    if object.cost.is_some_and(|c| c.memory_kib > MAX_KDF.memory_kib || c.iterations > MAX_KDF.iterations) {
        return Ok(None);
    }
    let (Ok(salt), Ok(wrapped)) = (hex::decode(&object.salt), hex::decode(&object.wrapped)) else { return Ok(None) };
    let Ok(kek) = key_encryption_key(secret, &salt, object.cost) else { return Ok(None) };
    let Ok(opened) = kek.open(WRAP_AAD, wrapped) else { return Ok(None) };
    let opened = Zeroizing::new(opened);
    Ok(<[u8; 32]>::try_from(opened.as_slice()).ok().map(BackupKey))
}

fn key_encryption_key(secret: &Secret, salt: &[u8], cost: Option<KdfCost>) -> Result<Sealer> {
    let mut kek = Zeroizing::new([0u8; 32]);
    match secret {
        Secret::Passphrase(passphrase) => {
            let cost = cost.ok_or_else(damaged_key)?;
            let params = argon2::Params::new(cost.memory_kib, cost.iterations, 1, Some(32))
                .map_err(|e| Error::invalid(format!("backup key derivation: {e}")))?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(passphrase.as_bytes(), salt, kek.as_mut())
                .map_err(|e| Error::internal(format!("argon2: {e}")))?;
        }
        // A random key needs no stretching.
        Secret::RecoveryKey(recovery) => Hkdf::<Sha256>::new(Some(salt), &recovery.0)
            .expand(b"selfcloud backup: recovery wrap v1", kek.as_mut())
            .expect("32 bytes"),
    }
    Ok(Sealer::new(&DataKey::from_bytes(*kek)))
}

fn damaged_key() -> Error {
    crate::damaged("a key object at the target is not one this version reads")
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: KdfCost = KdfCost { memory_kib: 64, iterations: 1 };

    #[test]
    fn a_wrap_opens_with_its_own_secret_only() {
        let key = BackupKey::generate();
        let recovery = RecoveryKey::generate();
        let by_passphrase = wrap(&key, &Secret::passphrase("correct horse battery"), CHEAP).unwrap();
        let by_recovery = wrap(&key, &Secret::RecoveryKey(recovery.clone()), CHEAP).unwrap();
        let opened = unwrap(&by_passphrase, &Secret::passphrase("correct horse battery")).unwrap().unwrap();
        assert_eq!(opened.0, key.0);
        assert_eq!(unwrap(&by_recovery, &Secret::RecoveryKey(recovery.clone())).unwrap().unwrap().0, key.0);
        assert!(unwrap(&by_passphrase, &Secret::passphrase("correct horse battery!")).unwrap().is_none());
        assert!(unwrap(&by_recovery, &Secret::RecoveryKey(RecoveryKey::generate())).unwrap().is_none());
        // A passphrase is never tried on the recovery wrap, nor the other way round.
        assert!(unwrap(&by_recovery, &Secret::passphrase("correct horse battery")).unwrap().is_none());
        assert!(unwrap(&by_passphrase, &Secret::RecoveryKey(recovery)).unwrap().is_none());
    }

    #[test]
    fn a_short_passphrase_is_refused() {
        let err = wrap(&BackupKey::generate(), &Secret::passphrase("too short"), CHEAP).unwrap_err();
        assert!(err.message.contains("12 characters"), "{err:?}");
    }

    #[test]
    fn a_recovery_key_reads_back_as_written_whatever_its_dashes_and_case() {
        let key = RecoveryKey::generate();
        let shown = key.to_string();
        assert_eq!(shown.len(), 64 + 15);
        assert_eq!(shown.parse::<RecoveryKey>().unwrap(), key);
        assert_eq!(shown.replace('-', " ").to_uppercase().parse::<RecoveryKey>().unwrap(), key);
        assert!("abcd-efgh".parse::<RecoveryKey>().is_err());
    }

    #[test]
    fn the_wrap_holds_no_key_bytes_in_the_clear() {
        let key = BackupKey::generate();
        let object = wrap(&key, &Secret::passphrase("correct horse battery"), CHEAP).unwrap();
        let text = serde_json::to_string(&object).unwrap();
        assert!(!text.contains(&hex::encode(key.0)));
        assert!(!text.contains("correct horse"));
    }
}
