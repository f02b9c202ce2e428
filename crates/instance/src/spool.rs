//! The import spool: an uploaded archive held on disk while it is checked and then imported. It
//! holds the user's records in clear, so it is sealed on the way to disk, in chunks, under a key
//! made for this one import and held only in memory (the store's own cipher): a crash leaves an
//! unreadable file, removed at the next open. Each chunk's associated data names its place and
//! whether it is the last, so chunks cannot be reordered, dropped or cut short unnoticed.

use selfcloud_core::{Error, Result};
use selfcloud_store::{DataKey, Sealer};
use std::io::Read;
use std::path::Path;
use tokio::io::AsyncWriteExt;

/// Plaintext bytes sealed together.
const CHUNK: usize = 64 * 1024;

fn aad(index: u64, last: bool) -> [u8; 15] {
    let mut aad = [0u8; 15];
    aad[..6].copy_from_slice(b"spool\0");
    aad[6..14].copy_from_slice(&index.to_be_bytes());
    aad[14] = u8::from(last);
    aad
}

/// Writes a spool file; [`SpoolWriter::finish`] hands back the key that reads it.
pub struct SpoolWriter {
    file: tokio::fs::File,
    sealer: Sealer,
    key: DataKey,
    pending: Vec<u8>,
    index: u64,
}

impl SpoolWriter {
    /// Creates `path` (which must not exist), mode 0600.
    pub async fn create(path: &Path) -> Result<Self> {
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true).mode(selfcloud_durable::FILE_MODE);
        let file = options.open(path).await.map_err(|e| selfcloud_durable::io_err("create", path, e))?;
        let key = DataKey::generate();
        Ok(SpoolWriter { file, sealer: Sealer::new(&key), key, pending: Vec::with_capacity(CHUNK), index: 0 })
    }

    pub async fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let take = (CHUNK - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() == CHUNK {
                self.seal_pending(false).await?;
            }
        }
        Ok(())
    }

    async fn seal_pending(&mut self, last: bool) -> Result<()> {
        let sealed = self.sealer.seal(&aad(self.index, last), &self.pending)?;
        self.pending.clear();
        self.index += 1;
        // A frame: whether it is the last (also bound in the associated data), its length, itself.
        let frame = [&[u8::from(last)][..], &(sealed.len() as u32).to_be_bytes(), &sealed].concat();
        self.file.write_all(&frame).await.map_err(|e| Error::internal(format!("write the import spool: {e}")))
    }

    /// Seals the last chunk (possibly empty) and answers the key to read the spool with.
    pub async fn finish(mut self) -> Result<DataKey> {
        self.seal_pending(true).await?;
        self.file.flush().await.map_err(|e| Error::internal(format!("write the import spool: {e}")))?;
        Ok(self.key)
    }
}

/// Reads a spool back as the plaintext it was written from.
pub struct SpoolReader<R> {
    inner: R,
    sealer: Sealer,
    chunk: Vec<u8>,
    at: usize,
    index: u64,
    done: bool,
}

impl<R: Read> SpoolReader<R> {
    pub fn new(inner: R, key: &DataKey) -> Self {
        SpoolReader { inner, sealer: Sealer::new(key), chunk: Vec::new(), at: 0, index: 0, done: false }
    }

    /// The next chunk, or `false` after the last.
    fn next_chunk(&mut self) -> std::io::Result<bool> {
        if self.done {
            return Ok(false);
        }
        let broken = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("import spool {what}"));
        let mut head = [0u8; 5];
        self.inner.read_exact(&mut head).map_err(|_| broken("cut short"))?;
        let last = head[0] == 1;
        let len = u32::from_be_bytes(head[1..].try_into().expect("4 bytes")) as usize;
        if len > CHUNK + 64 {
            return Err(broken("damaged"));
        }
        let mut sealed = vec![0u8; len];
        self.inner.read_exact(&mut sealed).map_err(|_| broken("cut short"))?;
        let opened = self.sealer.open(&aad(self.index, last), sealed).map_err(|_| broken("damaged"))?;
        (self.chunk, self.at, self.index, self.done) = (opened, 0, self.index + 1, last);
        Ok(true)
    }
}

impl<R: Read> Read for SpoolReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            if !self.next_chunk()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_spool_reads_back_what_was_written_and_never_holds_it_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let plain: Vec<u8> = (0..200_000u32).flat_map(|i| format!("secret-{i}|").into_bytes()).collect();
        let mut w = SpoolWriter::create(&path).await.unwrap();
        for piece in plain.chunks(7_777) {
            w.write(piece).await.unwrap();
        }
        let key = w.finish().await.unwrap();
        let disk = std::fs::read(&path).unwrap();
        assert!(!disk.windows(9).any(|w| w == b"secret-12"), "plaintext on disk");
        let mut back = Vec::new();
        SpoolReader::new(std::fs::File::open(&path).unwrap(), &key).read_to_end(&mut back).unwrap();
        assert_eq!(back, plain);
        // Cut short (the last chunk missing) or with another key: an error, never fewer bytes.
        let cut = &disk[..disk.len() - 100];
        assert!(SpoolReader::new(cut, &key).read_to_end(&mut Vec::new()).is_err());
        assert!(SpoolReader::new(disk.as_slice(), &DataKey::generate()).read_to_end(&mut Vec::new()).is_err());
    }
}
