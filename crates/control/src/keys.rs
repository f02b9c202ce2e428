//! Key derivation and key wrapping.
//!
//! One Argon2id derivation per password check gives 64 bytes: the first half verifies the
//! password (only its SHA-256 is stored), the second half is the key-encryption key that wraps
//! the instance's data key. Sign-up and log-in pay the deliberate KDF cost once.
//!
//! Each instance's data key is also wrapped by a sealing key derived (HKDF) from the node key, so
//! the server can open an instance for an app while its owner is offline.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand::RngCore;
use selfcloud_core::config::KdfParams;
use selfcloud_core::{Error, InstanceId, Result};
use selfcloud_instance::DataKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

pub const SALT_LEN: usize = 16;

/// The two halves of one password derivation.
pub struct PasswordKeys {
    verifier_hash: [u8; 32],
    kek: Zeroizing<[u8; 32]>,
}

impl PasswordKeys {
    pub fn derive(password: &str, salt: &[u8], params: KdfParams) -> Result<Self> {
        let argon_params = Params::new(params.m_cost, params.t_cost, params.p_cost, Some(64))
            .map_err(|e| Error::internal(format!("kdf params: {e}")))?;
        let mut out = Zeroizing::new([0u8; 64]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params)
            .hash_password_into(password.as_bytes(), salt, out.as_mut())
            .map_err(|e| Error::internal(format!("kdf: {e}")))?;
        let mut kek = Zeroizing::new([0u8; 32]);
        kek.copy_from_slice(&out[32..]);
        Ok(PasswordKeys { verifier_hash: Sha256::digest(&out[..32]).into(), kek })
    }

    pub fn verifier_hash(&self) -> [u8; 32] {
        self.verifier_hash
    }

    /// Constant-time comparison with a stored verifier hash.
    pub fn verifies(&self, stored: &[u8]) -> bool {
        stored.len() == 32 && bool::from(self.verifier_hash.ct_eq(stored))
    }

    pub fn kek(&self) -> &[u8; 32] {
        &self.kek
    }
}

pub fn random_salt() -> [u8; SALT_LEN] {
    let mut salt = [0u8; SALT_LEN];
    OsRng.fill_bytes(&mut salt);
    salt
}

/// A data key encrypted under a key-encryption key: `nonce || ciphertext+tag`, hex in files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey(#[serde(with = "hex_bytes")] Vec<u8>);

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

/// `purpose` goes into the AEAD's associated data, so a key wrapped for one role cannot be
/// swapped in for another.
pub fn wrap(kek: &[u8; 32], purpose: &str, key: &DataKey) -> Result<WrappedKey> {
    let aead = XChaCha20Poly1305::new(kek.into());
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let ct = aead
        .encrypt(&nonce, Payload { msg: key.as_bytes(), aad: purpose.as_bytes() })
        .map_err(|_| Error::internal("key wrap failed"))?;
    Ok(WrappedKey([nonce.as_slice(), &ct].concat()))
}

pub fn unwrap(kek: &[u8; 32], purpose: &str, wrapped: &WrappedKey) -> Result<DataKey> {
    let bytes = &wrapped.0;
    if bytes.len() != 24 + 32 + 16 {
        return Err(Error::internal("wrapped key has the wrong length"));
    }
    let aead = XChaCha20Poly1305::new(kek.into());
    let plain = Zeroizing::new(
        aead.decrypt(XNonce::from_slice(&bytes[..24]), Payload { msg: &bytes[24..], aad: purpose.as_bytes() })
            .map_err(|_| Error::internal("key unwrap failed"))?,
    );
    let mut key = [0u8; 32];
    key.copy_from_slice(&plain);
    Ok(DataKey::from_bytes(key))
}

/// The node's root secret; instance sealing keys are derived from it.
pub struct NodeKey(Zeroizing<[u8; 32]>);

impl NodeKey {
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(k.as_mut());
        NodeKey(k)
    }
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        NodeKey(Zeroizing::new(bytes))
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The sealing key of one instance: HKDF-SHA256 over the node key, bound to the instance id.
    pub fn instance_seal_key(&self, id: InstanceId) -> Zeroizing<[u8; 32]> {
        let hk = Hkdf::<Sha256>::new(Some(b"selfcloud instance seal v1"), self.0.as_ref());
        let mut out = Zeroizing::new([0u8; 32]);
        hk.expand(id.as_bytes(), out.as_mut()).expect("32 bytes is a valid HKDF length");
        out
    }
}

/// What an instance directory keeps about its data key (`keys.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstanceKeyFile {
    pub version: u32,
    /// Wrapped by the instance sealing key.
    pub sealed: WrappedKey,
    /// Wrapped by the owner's password-derived key, with the KDF inputs to rebuild it.
    pub password_wrapped: WrappedKey,
    pub kdf: KdfParams,
    #[serde(with = "hex_bytes")]
    pub salt: Vec<u8>,
    /// Wrapped by the key derived from the account's recovery code, with that derivation's salt.
    pub recovery_wrapped: WrappedKey,
    #[serde(with = "hex_bytes")]
    pub recovery_salt: Vec<u8>,
}

/// The key file version written now; a newer one is refused rather than misread.
pub const KEY_FILE_VERSION: u32 = 1;

impl InstanceKeyFile {
    /// Reads and parses a key file; `not_found` if there is none (a deleted instance's).
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::not_found("instance not found"),
            _ => Error::internal(format!("read {}: {e}", path.display())),
        })?;
        let file: InstanceKeyFile =
            serde_json::from_slice(&bytes).map_err(|e| Error::internal(format!("{}: {e}", path.display())))?;
        if file.version > KEY_FILE_VERSION {
            return Err(Error::internal(format!(
                "{} is version {}, newer than this binary",
                path.display(),
                file.version
            )));
        }
        Ok(file)
    }

    /// Writes the key file so a crash leaves the old one or the new one, whole (mode 0600).
    pub fn write(&self, path: &std::path::Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(Error::internal)?;
        selfcloud_durable::replace(path, &json)
    }
}

pub const SEAL_PURPOSE: &str = "selfcloud data key, sealed";
pub const PASSWORD_PURPOSE: &str = "selfcloud data key, password";
pub const RECOVERY_PURPOSE: &str = "selfcloud data key, recovery code";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_derivation_verifies_and_wraps() {
        let salt = random_salt();
        let keys = PasswordKeys::derive("correct horse", &salt, KdfParams::INSECURE_FOR_TESTS).unwrap();
        let again = PasswordKeys::derive("correct horse", &salt, KdfParams::INSECURE_FOR_TESTS).unwrap();
        let wrong = PasswordKeys::derive("correct horsf", &salt, KdfParams::INSECURE_FOR_TESTS).unwrap();
        assert!(again.verifies(&keys.verifier_hash()));
        assert!(!wrong.verifies(&keys.verifier_hash()));
        assert_ne!(keys.verifier_hash().as_slice(), keys.kek().as_slice());

        let data = DataKey::generate();
        let wrapped = wrap(keys.kek(), PASSWORD_PURPOSE, &data).unwrap();
        assert_eq!(unwrap(again.kek(), PASSWORD_PURPOSE, &wrapped).unwrap().as_bytes(), data.as_bytes());
        assert!(unwrap(wrong.kek(), PASSWORD_PURPOSE, &wrapped).is_err());
        assert!(unwrap(keys.kek(), SEAL_PURPOSE, &wrapped).is_err(), "purpose is bound");
    }

    #[test]
    fn instance_seal_keys_differ_per_instance_and_node() {
        let node = NodeKey::generate();
        let (a, b) = (InstanceId::random(), InstanceId::random());
        assert_ne!(*node.instance_seal_key(a), *node.instance_seal_key(b));
        assert_eq!(*node.instance_seal_key(a), *node.instance_seal_key(a));
        assert_ne!(*node.instance_seal_key(a), *NodeKey::generate().instance_seal_key(a));
    }
}
