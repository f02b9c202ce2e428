//! A backup repository at one target: set up under a passphrase, opened with it (or the
//! recovery key), and the snapshots in it taken, listed, checked, restored and removed.

use crate::keys::{self, BackupKey, KdfCost, KeyObject, RecoveryKey, Secret};
use crate::manifest::{check_path, ChunkRef, FileEntry, Manifest};
use crate::target::Target;
use crate::{damaged, padded_len, Progress, CHUNK_BYTES, PACK_BYTES};
use rand::RngCore;
use ring::hmac;
use selfcloud_core::{Error, Result};
use selfcloud_durable::io_err;
use selfcloud_store::Sealer;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Packs cut but not yet sent: the cutter runs this far ahead of the sender.
const PACKS_AHEAD: usize = 2;
/// The most parts a manifest is read from (4 GiB of manifest in packs' size: far past any store's).
const MAX_MANIFEST_PARTS: usize = 1 << 20;

/// What `snapshots/<id>` holds: the sealed manifest, or the parts it was stored in.
#[derive(serde::Serialize, serde::Deserialize)]
enum Stored {
    Whole(Vec<u8>),
    Parts(Vec<String>),
}

pub struct Repo {
    target: Arc<dyn Target>,
    sealer: Arc<Sealer>,
    ids: hmac::Key,
    /// Snapshots and collections one at a time: a collection never takes a pack that a
    /// snapshot under way has sent but not yet named in its manifest.
    writing: tokio::sync::Mutex<()>,
    /// A manifest longer than this is stored in parts (one request each).
    manifest_part_bytes: usize,
}

/// What a listing shows of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: String,
    pub taken_at_ms: u64,
    pub bytes: u64,
    pub files: usize,
}

impl Repo {
    /// The repository at `target` under a backup key already unlocked (kept, sealed, by the
    /// instance, so scheduled snapshots need no passphrase).
    pub fn with_key(target: Arc<dyn Target>, key: &BackupKey) -> Repo {
        Repo {
            target,
            sealer: Arc::new(key.sealer()),
            ids: key.chunk_ids(),
            writing: Default::default(),
            manifest_part_bytes: PACK_BYTES,
        }
    }

    /// Stores manifests longer than `bytes` in parts of that size (a target whose requests are
    /// smaller than a pack; tests).
    pub fn with_manifest_parts_of(mut self, bytes: usize) -> Repo {
        self.manifest_part_bytes = bytes.clamp(1024, PACK_BYTES);
        self
    }

    /// Sets up a repository at an empty target: a new backup key, wrapped under `passphrase`
    /// and under a new recovery key, which is returned to be shown once.
    pub async fn init(
        target: Arc<dyn Target>,
        passphrase: &str,
        cost: KdfCost,
    ) -> Result<(Repo, BackupKey, RecoveryKey)> {
        keys::check_passphrase(passphrase)?;
        if !target.list("keys").await?.is_empty() {
            return Err(Error::conflict("the target already holds a backup; open it with its passphrase"));
        }
        let key = BackupKey::generate();
        let recovery = RecoveryKey::generate();
        let (wrapping, secret, by_recovery) = (key.clone(), Secret::passphrase(passphrase), recovery.clone());
        // Argon2id is seconds of CPU: off the async runtime.
        let wraps = tokio::task::spawn_blocking(move || {
            Ok::<_, Error>([
                keys::wrap(&wrapping, &Secret::RecoveryKey(by_recovery), cost)?,
                keys::wrap(&wrapping, &secret, cost)?,
            ])
        })
        .await
        .map_err(Error::internal)??;
        for wrap in wraps {
            let bytes = serde_json::to_vec(&wrap).map_err(Error::internal)?;
            target.put(&new_name("keys"), bytes).await?;
        }
        Ok((Repo::with_key(target, &key), key, recovery))
    }

    /// Opens the repository at `target` with the user's passphrase or recovery key.
    pub async fn open(target: Arc<dyn Target>, secret: &Secret) -> Result<Repo> {
        let key = Repo::unlock(target.as_ref(), secret).await?;
        Ok(Repo::with_key(target, &key))
    }

    /// The backup key of the repository at `target`, unwrapped with the user's secret.
    pub async fn unlock(target: &dyn Target, secret: &Secret) -> Result<BackupKey> {
        let names = target.list("keys").await?;
        if names.is_empty() {
            return Err(Error::not_found("the target holds no backup"));
        }
        for name in names {
            let Some(bytes) = target.get(&name).await? else { continue };
            let Ok(object) = serde_json::from_slice::<KeyObject>(&bytes) else { continue };
            // Argon2id is seconds of CPU: off the async runtime.
            let secret = secret.clone();
            let key =
                tokio::task::spawn_blocking(move || keys::unwrap(&object, &secret)).await.map_err(Error::internal)?;
            if let Some(key) = key? {
                return Ok(key);
            }
        }
        Err(Error::forbidden("that passphrase (or recovery key) opens none of this target's keys"))
    }

    /// Takes a snapshot of the files under `source` (a consistent copy nothing writes to), sending
    /// only the chunks `parent` does not hold, then the manifest.
    pub async fn snapshot(
        &self,
        source: &Path,
        account: String,
        data_key: [u8; 32],
        now_ms: u64,
        parent: Option<&Manifest>,
        progress: Arc<Progress>,
    ) -> Result<Manifest> {
        let _one_at_a_time = self.writing.lock().await;
        let known = parent.map(known_chunks).unwrap_or_default();
        let (packs_tx, mut packs_rx) = mpsc::channel::<(String, Vec<u8>)>(PACKS_AHEAD);
        let cutter = {
            let (source, sealer, ids) = (source.to_owned(), self.sealer.clone(), self.ids.clone());
            tokio::task::spawn_blocking(move || cut(&source, &sealer, &ids, known, packs_tx, &progress))
        };
        let mut sent = Ok(());
        while let Some((name, bytes)) = packs_rx.recv().await {
            if let Err(e) = self.target.put(&name, bytes).await {
                sent = Err(e);
                break;
            }
        }
        // A failed send stops the cutter: its next pack finds the channel closed.
        drop(packs_rx);
        let cut = cutter.await.map_err(Error::internal)?;
        sent?;
        let (packs, files) = cut?;
        let manifest = Manifest {
            version: Manifest::new_version(),
            id: new_id(),
            taken_at_ms: now_ms,
            parent: parent.map(|p| p.id.clone()),
            account,
            data_key,
            packs,
            files,
        };
        self.put_manifest(&manifest).await?;
        Ok(manifest)
    }

    /// Stores the sealed manifest: whole as `snapshots/<id>` when it fits one object, else in
    /// parts of [`PACK_BYTES`] (pack objects, sent first) that the snapshot object names. A part
    /// swapped or missing fails the manifest's seal, so the names need no seal of their own.
    async fn put_manifest(&self, manifest: &Manifest) -> Result<()> {
        let sealed = manifest.seal(&self.sealer)?;
        let stored = if sealed.len() <= self.manifest_part_bytes {
            Stored::Whole(sealed)
        } else {
            let mut parts = Vec::new();
            for piece in sealed.chunks(self.manifest_part_bytes) {
                let name = new_name("packs");
                self.target.put(&name, piece.to_vec()).await?;
                parts.push(name);
            }
            Stored::Parts(parts)
        };
        let bytes = postcard::to_stdvec(&stored).map_err(Error::internal)?;
        self.target.put(&format!("snapshots/{}", manifest.id), bytes).await
    }

    /// The manifest stored as `snapshots/<id>` (`None` if there is none), with the names of the
    /// parts it was stored in.
    async fn read_manifest(&self, id: &str) -> Result<Option<(Manifest, Vec<String>)>> {
        let Some(bytes) = self.target.get(&format!("snapshots/{id}")).await? else { return Ok(None) };
        let stored: Stored = postcard::from_bytes(&bytes)
            .map_err(|_| damaged(format!("snapshot {id} is not one this version reads")))?;
        let (sealed, parts) = match stored {
            Stored::Whole(sealed) => (sealed, Vec::new()),
            Stored::Parts(parts) => {
                if parts.len() > MAX_MANIFEST_PARTS || parts.iter().any(|p| crate::target::check_name(p).is_err()) {
                    return Err(damaged(format!("snapshot {id} names parts that are not ours")));
                }
                let mut sealed = Vec::new();
                for part in &parts {
                    let piece = self.target.get(part).await?.ok_or_else(|| damaged(format!("{part} is missing")))?;
                    sealed.extend_from_slice(&piece);
                }
                (sealed, parts)
            }
        };
        Ok(Some((Manifest::open(&self.sealer, id, sealed)?, parts)))
    }

    /// The snapshot `id`'s manifest.
    pub async fn manifest(&self, id: &str) -> Result<Manifest> {
        let name = format!("snapshots/{id}");
        crate::target::check_name(&name).map_err(|_| Error::invalid("not a snapshot id"))?;
        Ok(self.read_manifest(id).await?.ok_or_else(|| Error::not_found("no such snapshot"))?.0)
    }

    /// Every snapshot at the target, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<Manifest>> {
        Ok(self.stored_snapshots().await?.into_iter().map(|(m, _)| m).collect())
    }

    /// Every snapshot with the parts its manifest is stored in, oldest first.
    async fn stored_snapshots(&self) -> Result<Vec<(Manifest, Vec<String>)>> {
        let mut all = Vec::new();
        for name in self.target.list("snapshots").await? {
            let id = name.trim_start_matches("snapshots/");
            // Removed between the listing and the read: not there.
            if let Some(stored) = self.read_manifest(id).await? {
                all.push(stored);
            }
        }
        all.sort_by(|(a, _), (b, _)| (a.taken_at_ms, &a.id).cmp(&(b.taken_at_ms, &b.id)));
        Ok(all)
    }

    /// Writes the snapshot's files into `into` (a new or empty directory), each chunk checked
    /// against its seal and its id. On any error `into` may hold a part: the caller restores
    /// beside what is live, never over it.
    pub async fn restore(&self, manifest: &Manifest, into: &Path, progress: Arc<Progress>) -> Result<()> {
        let files = tokio::task::spawn_blocking({
            let (manifest, into) = (manifest.clone(), into.to_owned());
            move || create_files(&manifest, &into)
        })
        .await
        .map_err(Error::internal)??;
        let files = Arc::new(files);
        self.read_chunks(manifest, &progress, |file, offset, plain| {
            use std::os::unix::fs::FileExt;
            files[file].write_all_at(plain, offset).map_err(|e| io_err("write", into, e))
        })
        .await?;
        let into = into.to_owned();
        tokio::task::spawn_blocking(move || {
            for f in files.iter() {
                f.sync_all().map_err(|e| io_err("sync", &into, e))?;
            }
            sync_dirs(&into)
        })
        .await
        .map_err(Error::internal)?
    }

    /// Reads every chunk of the snapshot from the target and checks it (seal, id, length),
    /// writing nothing.
    pub async fn verify(&self, manifest: &Manifest, progress: Arc<Progress>) -> Result<()> {
        self.read_chunks(manifest, &progress, |_, _, _| Ok(())).await
    }

    /// Removes a snapshot (its packs go at the next collection, once no snapshot names them).
    pub async fn forget(&self, id: &str) -> Result<()> {
        let _one_at_a_time = self.writing.lock().await;
        let name = format!("snapshots/{id}");
        crate::target::check_name(&name).map_err(|_| Error::invalid("not a snapshot id"))?;
        self.target.delete(&name).await
    }

    /// Removes the packs no snapshot names (left by removed snapshots, or by one cut short);
    /// returns how many.
    pub async fn collect_garbage(&self) -> Result<usize> {
        let _one_at_a_time = self.writing.lock().await;
        let named: HashSet<String> = self
            .stored_snapshots()
            .await?
            .into_iter()
            .flat_map(|(m, parts)| m.packs.into_iter().chain(parts))
            .collect();
        let mut removed = 0;
        for pack in self.target.list("packs").await? {
            if !named.contains(&pack) {
                self.target.delete(&pack).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Fetches each pack the snapshot names once and hands every chunk, checked, to `sink` with
    /// its file and offset.
    async fn read_chunks(
        &self,
        manifest: &Manifest,
        progress: &Progress,
        mut sink: impl FnMut(usize, u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        progress.add_total(manifest.bytes());
        let mut by_pack: Vec<Vec<(usize, u64, usize, ChunkRef)>> = vec![Vec::new(); manifest.packs.len()];
        for (i, file) in manifest.files.iter().enumerate() {
            for (n, chunk) in file.chunks.iter().enumerate() {
                let offset = (n * CHUNK_BYTES) as u64;
                let len = (file.size - offset).min(CHUNK_BYTES as u64) as usize;
                by_pack[chunk.pack as usize].push((i, offset, len, *chunk));
            }
        }
        for (pack, chunks) in manifest.packs.iter().zip(by_pack) {
            if chunks.is_empty() {
                continue;
            }
            let bytes = self.target.get(pack).await?.ok_or_else(|| damaged(format!("{pack} is missing")))?;
            for (file, offset, len, chunk) in chunks {
                let (start, end) = (chunk.offset as usize, chunk.offset as usize + chunk.len as usize);
                let sealed = bytes.get(start..end).ok_or_else(|| damaged(format!("{pack} is truncated")))?;
                let plain = self
                    .sealer
                    .open(&chunk.id, sealed.to_vec())
                    .map_err(|_| damaged(format!("a chunk in {pack} fails authentication (tampered)")))?;
                if plain.len() != len || chunk_id(&self.ids, &plain) != chunk.id {
                    return Err(damaged(format!("a chunk in {pack} is not the one its snapshot names")));
                }
                sink(file, offset, &plain)?;
                progress.add_done(len as u64);
            }
        }
        Ok(())
    }
}

/// A new object name of `kind`.
fn new_name(kind: &str) -> String {
    format!("{kind}/{}", new_id())
}

fn new_id() -> String {
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    hex::encode(id)
}

fn chunk_id(ids: &hmac::Key, plain: &[u8]) -> [u8; 16] {
    hmac::sign(ids, plain).as_ref()[..16].try_into().expect("16 bytes")
}

/// Where each chunk of `parent` lies: a chunk found here is not sent again.
fn known_chunks(parent: &Manifest) -> HashMap<[u8; 16], (String, u32, u32)> {
    let mut known = HashMap::new();
    for chunk in parent.files.iter().flat_map(|f| &f.chunks) {
        known.entry(chunk.id).or_insert_with(|| (parent.packs[chunk.pack as usize].clone(), chunk.offset, chunk.len));
    }
    known
}

/// The packs a manifest names, each once, by index.
#[derive(Default)]
struct PackTable {
    names: Vec<String>,
    index: HashMap<String, u32>,
}

impl PackTable {
    fn of(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.names.push(name.to_owned());
        self.index.insert(name.to_owned(), self.names.len() as u32 - 1);
        self.names.len() as u32 - 1
    }
}

/// Cuts every file under `source` into chunks; seals and packs those `known` lacks (and this
/// snapshot has not sent already), handing each full pack to `send`. Returns the packs named
/// and the files.
fn cut(
    source: &Path,
    sealer: &Sealer,
    ids: &hmac::Key,
    mut known: HashMap<[u8; 16], (String, u32, u32)>,
    send: mpsc::Sender<(String, Vec<u8>)>,
    progress: &Progress,
) -> Result<(Vec<String>, Vec<FileEntry>)> {
    let paths = walk(source)?;
    for (_, _, size) in &paths {
        progress.add_total(*size);
    }
    let mut table = PackTable::default();
    let mut pack = Vec::with_capacity(PACK_BYTES);
    let mut pack_name = new_name("packs");
    let flush = |pack: &mut Vec<u8>, name: &mut String, full: bool| -> Result<()> {
        let len = if full { PACK_BYTES } else { padded_len(pack.len()) };
        let start = pack.len();
        pack.resize(len, 0);
        rand::thread_rng().fill_bytes(&mut pack[start..]);
        let bytes = std::mem::replace(pack, Vec::with_capacity(PACK_BYTES));
        send.blocking_send((std::mem::replace(name, new_name("packs")), bytes))
            .map_err(|_| Error::unavailable("the snapshot stopped: sending to the target failed", Default::default()))
    };
    let mut files = Vec::with_capacity(paths.len());
    let mut chunk = vec![0u8; CHUNK_BYTES];
    for (relative, path, _) in paths {
        let mut file = std::fs::File::open(&path).map_err(|e| io_err("open", &path, e))?;
        let mut entry = FileEntry { path: relative, size: 0, chunks: Vec::new() };
        loop {
            let n = read_full(&mut file, &mut chunk).map_err(|e| io_err("read", &path, e))?;
            if n == 0 {
                break;
            }
            let plain = &chunk[..n];
            let id = chunk_id(ids, plain);
            let (pack_of, offset, len) = match known.get(&id) {
                Some((name, offset, len)) => (table.of(name), *offset, *len),
                None => {
                    let sealed = sealer.seal(&id, plain)?;
                    if pack.len() + sealed.len() > PACK_BYTES {
                        flush(&mut pack, &mut pack_name, true)?;
                    }
                    let offset = pack.len() as u32;
                    pack.extend_from_slice(&sealed);
                    known.insert(id, (pack_name.clone(), offset, sealed.len() as u32));
                    (table.of(&pack_name), offset, sealed.len() as u32)
                }
            };
            entry.chunks.push(ChunkRef { id, pack: pack_of, offset, len });
            entry.size += n as u64;
            progress.add_done(n as u64);
            if n < CHUNK_BYTES {
                break;
            }
        }
        files.push(entry);
    }
    if !pack.is_empty() {
        flush(&mut pack, &mut pack_name, false)?;
    }
    Ok((table.names, files))
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The regular files under `root`, in path order: (relative path, full path, size).
fn walk(root: &Path) -> Result<Vec<(String, PathBuf, u64)>> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| io_err("list", &dir, e))? {
            let entry = entry.map_err(|e| io_err("list", &dir, e))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| io_err("stat", &path, e))?;
            if kind.is_dir() {
                dirs.push(path);
            } else if kind.is_file() {
                let size = entry.metadata().map_err(|e| io_err("stat", &path, e))?.len();
                let relative = path.strip_prefix(root).expect("under the root").to_string_lossy().into_owned();
                check_path(&relative)?;
                out.push((relative, path, size));
            }
            // Anything else (a link, a socket) is not the instance's data.
        }
    }
    out.sort();
    Ok(out)
}

/// Creates every file of the snapshot under `into` at its size, for the chunks to be written in.
fn create_files(manifest: &Manifest, into: &Path) -> Result<Vec<std::fs::File>> {
    selfcloud_durable::create_private_dir(into)?;
    if std::fs::read_dir(into).map_err(|e| io_err("read", into, e))?.next().is_some() {
        return Err(Error::conflict("a restore goes into an empty directory"));
    }
    let mut files = Vec::with_capacity(manifest.files.len());
    for entry in &manifest.files {
        let path = into.join(&entry.path);
        selfcloud_durable::create_private_dir(path.parent().expect("under into"))?;
        let mut options = std::fs::OpenOptions::new();
        std::os::unix::fs::OpenOptionsExt::mode(options.write(true).create_new(true), selfcloud_durable::FILE_MODE);
        let file = options.open(&path).map_err(|e| io_err("create", &path, e))?;
        file.set_len(entry.size).map_err(|e| io_err("size", &path, e))?;
        files.push(file);
    }
    Ok(files)
}

/// Syncs `root` and every directory under it, so the restored files' entries are durable.
fn sync_dirs(root: &Path) -> Result<()> {
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| io_err("list", &dir, e))? {
            let entry = entry.map_err(|e| io_err("list", &dir, e))?;
            if entry.file_type().map_err(|e| io_err("stat", &dir, e))?.is_dir() {
                dirs.push(entry.path());
            }
        }
        selfcloud_durable::sync_dir(&dir)?;
    }
    Ok(())
}
