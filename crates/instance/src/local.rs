//! One instance's store, opened on its own directory with its own key: its records and its
//! access log, their export and import. The other parts (the LLM, the ledger, the vector index)
//! sit beside it in `service::Shared`. The service (`crate::service`) is the only user; it runs
//! in the server process (`inproc`) or in the instance's own (`process`).

use crate::spool::{SpoolReader, SpoolWriter};
use crate::{archive, AuditEntry, AuditRecord, ByteStream, ImportLimits, IntegrityReport, StorageUsage};
use selfcloud_core::{Collection, Error, ErrorCode, InstanceId, RecordKey, Result};
use selfcloud_store::{
    DataKey, EngineKind, ImportRecord, Page, Precondition, Record, Rev, ScanPage, Store, StoreOptions, Usage,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Checks the spooled archive whole, then reads it again into one atomic import. Blocking.
fn import_spooled(store: &Store, path: &Path, key: &DataKey, max_value_bytes: usize) -> Result<Usage> {
    let open = || {
        let file = std::fs::File::open(path).map_err(|e| selfcloud_durable::io_err("open", path, e))?;
        Ok(SpoolReader::new(std::io::BufReader::new(file), key))
    };
    // First pass: nothing is written, so a damaged archive costs one read.
    archive::walk(open()?, max_value_bytes, |r| {
        known_collection(&r.collection)?;
        crate::memory::check_imported(&r.collection, &r.key, &r.value)
    })?;
    // Second pass: a reader thread walks the archive again and hands records over a short
    // queue; a fault it meets arrives as an error, and the import rolls back.
    let usage = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<ImportRecord>>(256);
        scope.spawn(move || {
            let send = |r: Result<ImportRecord>| tx.send(r).map_err(|_| Error::internal("the import stopped reading"));
            let walked = open().and_then(|spool| archive::walk(spool, max_value_bytes, |r| send(Ok(r))));
            if let Err(e) = walked {
                let _ = send(Err(e));
            }
        });
        store.import(rx)
    })?;
    Ok(usage)
}

/// An archive's collection is a client's name or one of the instance's own: an unknown internal
/// one is refused (nothing reads it, and it would only take up the quota).
fn known_collection(collection: &Collection) -> Result<()> {
    let name = collection.as_str();
    match name.strip_prefix('_') {
        Some(internal) if !crate::service::is_internal_collection(internal) => {
            Err(Error::invalid(format!("the archive holds {name}, which is no part of an instance")))
        }
        _ => Ok(()),
    }
}

/// The lock file of an instance directory.
const LOCK_FILE: &str = "instance.lock";
/// How long an open waits for the directory's previous holder to let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes the directory's lock, waiting up to [`LOCK_WAIT`] for a previous holder (a process
/// still finishing after its server died) to exit.
fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| selfcloud_durable::io_err("open", &path, e))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) || std::time::Instant::now() >= deadline {
            return Err(Error::unavailable(
                format!("the instance is still held by another process ({e})"),
                std::time::Duration::from_secs(1),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

pub struct Local {
    id: InstanceId,
    dir: PathBuf,
    engine: EngineKind,
    store: Arc<Held>,
    /// The records' key, which a backup's manifest carries (sealed under the user's backup key)
    /// so a restore needs nothing from this server.
    key: DataKey,
    /// Held by the one import under way.
    importing: tokio::sync::Mutex<()>,
}

/// The store with the directory's lock: one process at a time opens an instance directory,
/// whatever the runtime (an instance process orphaned by a killed server finishes before the next
/// opens). The lock goes with the last handle on the store (a write still finishing on the
/// blocking pool holds one), after the store has closed: fields drop in order.
struct Held {
    store: Store,
    _lock: std::fs::File,
}

impl std::ops::Deref for Held {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

/// Where an import's archive is spooled while it is checked, inside the instance's directory.
const IMPORT_SPOOL: &str = "import.tar.tmp";

/// Where backups copy the store and drill their restores, inside the instance's own directory.
const BACKUP_SCRATCH: &str = "backup-scratch";

/// A scratch directory, removed with everything in it when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes the spool file however the import ends.
struct Spool(PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Local {
    /// Creates the instance's store in `dir` with the chosen engine.
    pub fn create(
        id: InstanceId,
        dir: &Path,
        key: &DataKey,
        engine: EngineKind,
        options: StoreOptions,
    ) -> Result<Self> {
        let lock = lock_dir(dir)?;
        let store = Store::create(engine, dir, key, options)?;
        Ok(Self::over(lock, id, dir, engine, store, key))
    }

    /// Opens the instance living in `dir`; its engine is told by what is on disk.
    pub fn open(id: InstanceId, dir: &Path, key: &DataKey, options: StoreOptions) -> Result<Self> {
        let lock = lock_dir(dir)?;
        let engine = EngineKind::detect(dir).ok_or_else(|| Error::not_found("instance has no store"))?;
        let store = Store::open(engine, dir, key, options)?;
        // A spool left by an import the process did not live to finish.
        let _ = std::fs::remove_file(dir.join(IMPORT_SPOOL));
        // And the copies of a backup it did not live to finish.
        let _ = std::fs::remove_dir_all(dir.join(BACKUP_SCRATCH));
        Ok(Self::over(lock, id, dir, engine, store, key))
    }

    fn over(lock: std::fs::File, id: InstanceId, dir: &Path, engine: EngineKind, store: Store, key: &DataKey) -> Self {
        let store = Arc::new(Held { store, _lock: lock });
        Local { id, dir: dir.to_owned(), engine, store, key: key.clone(), importing: Default::default() }
    }

    /// Streams `archive` into the (sealed) spool file, refusing it past `max_bytes`. Answers the
    /// spool, removed when dropped, and the key that reads it.
    async fn spool(&self, mut archive: ByteStream, max_bytes: u64) -> Result<(Spool, DataKey)> {
        use futures_util::StreamExt;
        let path = self.dir.join(IMPORT_SPOOL);
        let _ = tokio::fs::remove_file(&path).await;
        let mut writer = SpoolWriter::create(&path).await?;
        let spool = Spool(path);
        let mut total = 0u64;
        while let Some(chunk) = archive.next().await {
            let chunk = chunk.map_err(|e| Error::invalid(format!("the upload broke off: {e}")))?;
            total += chunk.len() as u64;
            if total > max_bytes {
                return Err(Error::new(ErrorCode::TooLarge, format!("an import is at most {max_bytes} bytes")));
            }
            writer.write(&chunk).await?;
        }
        Ok((spool, writer.finish().await?))
    }

    /// Runs a write on the blocking pool: writes wait for fsync and must not stall the runtime.
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Store) -> Result<T> + Send + 'static) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store)).await.map_err(Error::internal)?
    }
}

impl Local {
    pub fn id(&self) -> InstanceId {
        self.id
    }

    pub async fn get_record(&self, collection: &Collection, key: &RecordKey) -> Result<Option<Record>> {
        // A point read from the page cache takes microseconds: cheaper inline than a thread hop.
        self.store.get(collection, key)
    }

    pub async fn put_record(
        &self,
        collection: &Collection,
        key: &RecordKey,
        value: Vec<u8>,
        cond: Precondition,
    ) -> Result<Rev> {
        let (c, k) = (collection.clone(), key.clone());
        self.blocking(move |s| s.put(&c, &k, &value, cond)).await
    }

    pub async fn delete_record(&self, collection: &Collection, key: &RecordKey, cond: Precondition) -> Result<()> {
        let (c, k) = (collection.clone(), key.clone());
        self.blocking(move |s| s.delete(&c, &k, cond)).await
    }

    pub async fn list_records(
        &self,
        collection: &Collection,
        prefix: &str,
        limit: usize,
        max_bytes: usize,
        cursor: Option<&str>,
    ) -> Result<Page> {
        // A page reads and opens up to `max_bytes` of values: too much for the async runtime.
        let (c, prefix, cursor) = (collection.clone(), prefix.to_owned(), cursor.map(str::to_owned));
        self.blocking(move |s| s.list(&c, &prefix, limit, max_bytes, cursor.as_deref())).await
    }

    pub async fn storage_usage(&self) -> Result<StorageUsage> {
        let usage = self.store.usage()?;
        Ok(StorageUsage { records: usage.records, bytes: usage.bytes, quota_bytes: self.store.quota_bytes() })
    }

    pub async fn set_quota(&self, quota_bytes: u64) -> Result<()> {
        self.store.set_quota_bytes(quota_bytes);
        Ok(())
    }

    pub async fn verify(&self) -> Result<IntegrityReport> {
        let engine = self.engine.as_str().to_owned();
        let usage = self.blocking(|s| s.verify()).await?;
        Ok(IntegrityReport { engine, records: usage.records, bytes: usage.bytes })
    }

    pub async fn export_records(&self, cursor: Option<&str>, limit: usize, max_bytes: usize) -> Result<ScanPage> {
        // A page reads and opens up to `max_bytes` of values: too much for the async runtime.
        let cursor = cursor.map(str::to_owned);
        self.blocking(move |s| s.scan(cursor.as_deref(), limit, max_bytes)).await
    }

    pub async fn import_archive(&self, archive: ByteStream, limits: ImportLimits) -> Result<StorageUsage> {
        let _one =
            self.importing.try_lock().map_err(|_| Error::conflict("an import into this instance is under way"))?;
        // Refused before the upload is read, when it is bound to be refused after.
        if self.store.usage()?.records != 0 {
            return Err(Error::conflict("the instance already holds records; import needs an empty one"));
        }
        let (spool, key) = self.spool(archive, limits.max_bytes).await?;
        let usage = self.blocking(move |store| import_spooled(store, &spool.0, &key, limits.max_value_bytes)).await?;
        Ok(StorageUsage { records: usage.records, bytes: usage.bytes, quota_bytes: self.store.quota_bytes() })
    }

    /// A new, empty scratch directory inside the instance's own.
    pub fn scratch(&self) -> Result<Scratch> {
        let path = self.dir.join(BACKUP_SCRATCH).join(format!("{:016x}", rand::random::<u64>()));
        selfcloud_durable::create_private_dir(&path)?;
        Ok(Scratch(path))
    }

    /// A copy of the whole store as of one moment (records, counters, the access log), in
    /// `copy/` of a new scratch directory, for a backup to cut.
    pub async fn snapshot_copy(&self) -> Result<Scratch> {
        let scratch = self.scratch()?;
        let into = scratch.path().join("copy");
        self.blocking(move |s| s.snapshot(&into)).await?;
        Ok(scratch)
    }

    pub fn data_key(&self) -> &DataKey {
        &self.key
    }

    /// Opens the store restored into `dir` under `key` and checks it whole: a backup's drill.
    pub async fn check_restored(dir: PathBuf, key: DataKey) -> Result<IntegrityReport> {
        tokio::task::spawn_blocking(move || {
            let engine = EngineKind::detect(&dir).ok_or_else(|| Error::internal("the restored copy holds no store"))?;
            let store = Store::open(engine, &dir, &key, StoreOptions { quota_bytes: u64::MAX })?;
            let usage = store.verify()?;
            // Every value opens under the key the manifest carries, the log's entries too.
            let mut cursor = None;
            loop {
                let page = store.scan(cursor.as_deref(), 1000, 1 << 20)?;
                cursor = page.cursor;
                if cursor.is_none() {
                    break;
                }
            }
            store.read_log(None, usize::MAX)?;
            Ok(IntegrityReport { engine: engine.as_str().to_owned(), records: usage.records, bytes: usage.bytes })
        })
        .await
        .map_err(Error::internal)?
    }

    pub async fn append_audit(&self, entries: &[AuditEntry], keep: u64) -> Result<()> {
        let encoded =
            entries.iter().map(|e| serde_json::to_vec(e).map_err(Error::internal)).collect::<Result<Vec<_>>>()?;
        self.blocking(move |s| s.append_log(&encoded, keep).map(drop)).await
    }

    pub async fn read_audit(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditRecord>> {
        self.store
            .read_log(before, limit)?
            .into_iter()
            .map(|(seq, bytes)| {
                Ok(AuditRecord { seq, entry: serde_json::from_slice(&bytes).map_err(Error::internal)? })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_may_hold_the_instances_own_collections_and_no_other_internal_one() {
        let declared: Vec<&str> = crate::service::PARTS.iter().flat_map(|p| p.collections.iter().copied()).collect();
        // The ledger, the vector index, memories, conversations and the assistant's settings.
        assert_eq!(declared.len(), 5, "{declared:?}");
        for name in declared {
            assert!(known_collection(&Collection::internal(name)).is_ok(), "{name}");
        }
        assert!(known_collection(&Collection::parse("notes").unwrap()).is_ok());
        let e = known_collection(&Collection::internal("evil")).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("_evil"), "{}", e.message);
    }
}
