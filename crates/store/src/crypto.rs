//! Encryption at rest: XChaCha20-Poly1305 under the instance's data key, a fresh random nonce per
//! value (192-bit nonces make random ones safe for any realistic number of writes). Nonces come
//! from the thread's CSPRNG (ChaCha, seeded and reseeded from the OS), not a syscall per value.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use selfcloud_core::{Error, Result};
use zeroize::{Zeroize, ZeroizeOnDrop};

const NONCE_LEN: usize = 24;

/// An instance's 256-bit data key. Zeroed when dropped; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl DataKey {
    pub fn generate() -> Self {
        DataKey(XChaCha20Poly1305::generate_key(&mut OsRng).into())
    }
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(bytes)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

pub(crate) struct Sealer(XChaCha20Poly1305);

impl Sealer {
    pub fn new(key: &DataKey) -> Self {
        Sealer(XChaCha20Poly1305::new(key.as_bytes().into()))
    }

    /// `nonce || ciphertext+tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut rand::thread_rng());
        let ct = self.0.encrypt(&nonce, Payload { msg: plaintext, aad }).map_err(|_| Error::internal("seal failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return Err(Error::internal("sealed value too short"));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.0
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| Error::internal("stored value failed authentication (tampered or wrong key)"))
    }
}
