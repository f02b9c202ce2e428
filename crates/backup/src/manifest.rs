//! A snapshot's manifest: the moment, the account it belongs to, the instance's data key, and
//! every file with where each of its chunks lies. Sealed and padded at the target, so only the
//! user's key reads it; bound to its own object name, so one cannot stand in for another.

use selfcloud_core::{Error, Result};
use selfcloud_store::Sealer;
use serde::{Deserialize, Serialize};
use std::path::{Component, Path};
use zeroize::Zeroizing;

const MANIFEST_VERSION: u8 = 1;
const MANIFEST_AAD: &[u8] = b"selfcloud backup manifest v1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u8,
    /// Its object's id (`snapshots/<id>`).
    pub id: String,
    pub taken_at_ms: u64,
    /// The snapshot it was taken against (its chunks were not sent again).
    pub parent: Option<String>,
    /// The account it belongs to, from control (JSON: user id, username, tier, the apps that
    /// had access). Never a password verifier or a token.
    pub account: String,
    /// The key the instance's records are sealed under, so a restore needs nothing but the
    /// user's secret and the target.
    pub data_key: [u8; 32],
    /// The packs its chunks lie in; a [`ChunkRef`] names one by its index here.
    pub packs: Vec<String>,
    pub files: Vec<FileEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the instance's directory, `/`-separated.
    pub path: String,
    pub size: u64,
    /// In file order; each but the last is [`crate::CHUNK_BYTES`] long.
    pub chunks: Vec<ChunkRef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: [u8; 16],
    pub pack: u32,
    /// Where its sealed bytes lie in the pack.
    pub offset: u32,
    pub len: u32,
}

impl Manifest {
    /// The bytes of all its files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The sealed, padded object.
    pub(crate) fn seal(&self, sealer: &Sealer) -> Result<Vec<u8>> {
        let body = Zeroizing::new(postcard::to_stdvec(self).map_err(Error::internal)?);
        let mut plain = Zeroizing::new(Vec::with_capacity(crate::padded_len(body.len() + 8)));
        plain.extend_from_slice(&(body.len() as u64).to_le_bytes());
        plain.extend_from_slice(&body);
        plain.resize(crate::padded_len(body.len() + 8), 0);
        sealer.seal(&aad(&self.id), &plain)
    }

    /// Opens the object `snapshots/<id>`: it must have been sealed under this key as that id.
    pub(crate) fn open(sealer: &Sealer, id: &str, sealed: Vec<u8>) -> Result<Manifest> {
        let plain = Zeroizing::new(
            sealer
                .open(&aad(id), sealed)
                .map_err(|_| crate::damaged(format!("snapshot {id} fails authentication (tampered or truncated)")))?,
        );
        let bad = || crate::damaged(format!("snapshot {id} is not a manifest this version reads"));
        let len = plain.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).ok_or_else(bad)?;
        let end = usize::try_from(len).ok().and_then(|len| len.checked_add(8)).ok_or_else(bad)?;
        let body = plain.get(8..end).ok_or_else(bad)?;
        let manifest: Manifest = postcard::from_bytes(body).map_err(|_| bad())?;
        if manifest.version != MANIFEST_VERSION || manifest.id != id {
            return Err(bad());
        }
        for file in &manifest.files {
            check_path(&file.path).map_err(|_| bad())?;
            let whole = file.size.div_ceil(crate::CHUNK_BYTES as u64);
            if file.chunks.len() as u64 != whole || file.chunks.iter().any(|c| c.pack as usize >= manifest.packs.len())
            {
                return Err(bad());
            }
        }
        Ok(manifest)
    }

    pub(crate) fn new_version() -> u8 {
        MANIFEST_VERSION
    }
}

fn aad(id: &str) -> Vec<u8> {
    [MANIFEST_AAD, b"\0", id.as_bytes()].concat()
}

/// A manifest's file path is relative and goes nowhere up: a restore writes only beneath the
/// directory it restores into.
pub(crate) fn check_path(path: &str) -> Result<()> {
    let plain = !path.contains('\\')
        && path.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && Path::new(path).components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(Error::invalid(format!("not a relative path: {path:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfcloud_store::DataKey;

    fn sample() -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            id: "0123456789abcdef0123456789abcdef".into(),
            taken_at_ms: 7,
            parent: None,
            account: "{\"username\":\"ada\"}".into(),
            data_key: [9; 32],
            packs: vec!["packs/00000000000000000000000000000000".into()],
            files: vec![FileEntry {
                path: "store.db".into(),
                size: 5000,
                chunks: vec![ChunkRef { id: [1; 16], pack: 0, offset: 0, len: 4137 }; 2],
            }],
        }
    }

    #[test]
    fn a_manifest_opens_only_under_its_key_and_its_name() {
        let sealer = Sealer::new(&DataKey::generate());
        let m = sample();
        let sealed = m.seal(&sealer).unwrap();
        assert_eq!(Manifest::open(&sealer, &m.id, sealed.clone()).unwrap(), m);
        let other = "ffffffffffffffffffffffffffffffff";
        assert!(Manifest::open(&sealer, other, sealed.clone()).unwrap_err().message.contains("damaged"));
        assert!(Manifest::open(&Sealer::new(&DataKey::generate()), &m.id, sealed.clone()).is_err());
        let mut flipped = sealed.clone();
        flipped[40] ^= 1;
        assert!(Manifest::open(&sealer, &m.id, flipped).is_err());
        assert!(Manifest::open(&sealer, &m.id, sealed[..sealed.len() - 1].to_vec()).is_err());
    }

    #[test]
    fn paths_that_leave_the_restore_are_refused() {
        check_path("store.rocksdb/000012.sst").unwrap();
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a\\b"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_manifest_whose_chunks_do_not_cover_its_file_is_refused() {
        let sealer = Sealer::new(&DataKey::generate());
        let mut m = sample();
        m.files[0].size = 9000;
        let sealed = m.seal(&sealer).unwrap();
        assert!(Manifest::open(&sealer, &m.id, sealed).is_err());
    }
}
