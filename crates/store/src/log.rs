//! The instance's log (the audit log) as the facade stores it: each append is one batch, sealed
//! once, so a busy instance pays one AEAD and one row per batch rather than per entry. A batch is
//! bound to the sequence numbers it holds, so a batch moved or renumbered on disk fails to open.

use selfcloud_core::{Error, Result};

/// `len (u32 LE) || bytes`, for each entry in order.
pub(crate) fn pack(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(|e| 4 + e.len()).sum());
    for e in entries {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// The entries of a packed batch, which must hold exactly `count`.
pub(crate) fn unpack(mut bytes: &[u8], count: u64) -> Result<Vec<Vec<u8>>> {
    let bad = || Error::internal("log batch is malformed");
    let mut out = Vec::with_capacity(count.min(1 << 16) as usize);
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = u32::from_le_bytes(*len) as usize;
        let entry = rest.get(..len).ok_or_else(bad)?;
        out.push(entry.to_vec());
        bytes = &rest[len..];
    }
    if out.len() as u64 != count {
        return Err(bad());
    }
    Ok(out)
}

/// Associated data of the batch holding entries `first .. first + count`.
pub(crate) fn aad(first: u64, count: u64) -> [u8; 20] {
    let mut aad = [0u8; 20];
    aad[..4].copy_from_slice(b"log\0");
    aad[4..12].copy_from_slice(&first.to_be_bytes());
    aad[12..].copy_from_slice(&count.to_be_bytes());
    aad
}

/// How many of a batch's entries (it ends at `last` and holds `count`) come before `before`.
pub(crate) fn entries_before(last: u64, count: u64, before: u64) -> u64 {
    let first = last + 1 - count;
    before.saturating_sub(first).min(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_pack_and_unpack_exactly() {
        let entries = vec![b"a".to_vec(), Vec::new(), vec![0xff; 300]];
        assert_eq!(unpack(&pack(&entries), 3).unwrap(), entries);
        assert!(unpack(&pack(&entries), 2).is_err());
        let packed = pack(&entries);
        assert!(unpack(&packed[..packed.len() - 1], 3).is_err());
        assert_eq!(entries_before(10, 5, 8), 2); // entries 6..=10: 6 and 7 come before 8
        assert_eq!(entries_before(10, 5, 100), 5);
        assert_eq!(entries_before(10, 5, 6), 0);
        assert_ne!(aad(1, 2), aad(2, 1));
    }
}
