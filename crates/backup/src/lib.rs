//! User-controlled backup: an instance's files as of one moment, cut into chunks, each sealed
//! under a key only the user can rebuild, packed and sent to a target the user picked.
//!
//! A target holds three kinds of object, each under a random name: `keys/` (the backup key,
//! wrapped under the user's passphrase and under a recovery key, [`keys`]), `packs/` (sealed
//! chunks, padded to a fixed size) and `snapshots/` (one sealed, padded manifest per snapshot,
//! naming every file and where each of its chunks lies). So a target learns how much and when,
//! never what: no file name, record, collection or key name reaches it in the clear.
//!
//! Chunks are cut at fixed 4 KiB offsets, not by content: every file an instance holds is a
//! database of pages, which changes in place or grows at its end, and fixed cuts never shift
//! under either. A chunk's id is a keyed hash of its content, so a snapshot sends only the
//! chunks its parent lacks. Packs go first and the manifest last: a snapshot exists at the
//! target only once everything it names is there.

pub mod keys;
mod manifest;
mod repo;
pub mod target;

pub use keys::{BackupKey, KdfCost, RecoveryKey, Secret};
pub use manifest::{ChunkRef, FileEntry, Manifest};
pub use repo::{Repo, SnapshotInfo};
pub use target::{DirTarget, Target};

use selfcloud_core::{Error, ErrorCode};
use std::sync::atomic::{AtomicU64, Ordering};

/// The size chunks are cut at (the page size of the instance's databases).
pub const CHUNK_BYTES: usize = 4096;
/// A pack's size: every pack but a snapshot's last is exactly this long (and fits one request on
/// the egress channel, whose default bound is 4 MiB).
pub const PACK_BYTES: usize = 4 << 20;

/// The error for what a target holds that fails a check (tampered, truncated, missing): the
/// backup is damaged, which nothing here can mend.
pub fn damaged(detail: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::UpstreamFailed, format!("the backup at the target is damaged: {detail}"))
}

/// The length a padded object takes (Padmé: at most 12 % more, and only about log log L bits of
/// the length show).
pub fn padded_len(len: usize) -> usize {
    if len < 2 {
        return len;
    }
    let e = usize::BITS - 1 - len.leading_zeros();
    let s = u32::BITS - e.leading_zeros();
    let mask = (1usize << (e - s)) - 1;
    (len + mask) & !mask
}

/// How far a long step is, for progress bars: bytes done of bytes to do.
#[derive(Debug, Default)]
pub struct Progress {
    total: AtomicU64,
    done: AtomicU64,
}

impl Progress {
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
    pub(crate) fn add_total(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_adds_at_most_an_eighth_and_hides_the_low_bits() {
        for len in [2usize, 3, 100, 4096, 4137, 1 << 20, (1 << 20) + 1, 9_999_999] {
            let p = padded_len(len);
            assert!(p >= len && p as f64 <= len as f64 * 1.125, "{len} -> {p}");
        }
        // Lengths near each other pad to one.
        assert_eq!(padded_len(1_000_001), padded_len(1_000_100));
        assert_eq!(padded_len(0), 0);
    }
}
