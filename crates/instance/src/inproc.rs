//! The in-process runtime: the instance is a set of values inside the server process. Fast, with
//! logical isolation only (its own directory, file and key).

use crate::{AuditEntry, AuditRecord, Instance, IntegrityReport, StorageUsage};
use async_trait::async_trait;
use selfcloud_core::{Collection, Error, InstanceId, RecordKey, Result};
use selfcloud_store::{
    DataKey, EngineKind, ImportRecord, Page, Precondition, Record, Rev, ScanPage, Store, StoreOptions,
};
use std::path::Path;
use std::sync::Arc;

pub struct InprocInstance {
    id: InstanceId,
    engine: EngineKind,
    store: Arc<Store>,
}

impl InprocInstance {
    /// Creates the instance's store in `dir` with the chosen engine.
    pub fn create(
        id: InstanceId,
        dir: &Path,
        key: &DataKey,
        engine: EngineKind,
        options: StoreOptions,
    ) -> Result<Self> {
        let store = Store::create(engine, dir, key, options)?;
        Ok(InprocInstance { id, engine, store: Arc::new(store) })
    }

    /// Opens the instance living in `dir`; its engine is told by what is on disk.
    pub fn open(id: InstanceId, dir: &Path, key: &DataKey, options: StoreOptions) -> Result<Self> {
        let engine = EngineKind::detect(dir).ok_or_else(|| Error::not_found("instance has no store"))?;
        let store = Store::open(engine, dir, key, options)?;
        Ok(InprocInstance { id, engine, store: Arc::new(store) })
    }

    /// Runs a write on the blocking pool: writes wait for fsync and must not stall the runtime.
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Store) -> Result<T> + Send + 'static) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store)).await.map_err(Error::internal)?
    }
}

#[async_trait]
impl Instance for InprocInstance {
    fn id(&self) -> InstanceId {
        self.id
    }

    async fn get_record(&self, collection: &Collection, key: &RecordKey) -> Result<Option<Record>> {
        // A point read from the page cache takes microseconds: cheaper inline than a thread hop.
        self.store.get(collection, key)
    }

    async fn put_record(
        &self,
        collection: &Collection,
        key: &RecordKey,
        value: Vec<u8>,
        cond: Precondition,
    ) -> Result<Rev> {
        let (c, k) = (collection.clone(), key.clone());
        self.blocking(move |s| s.put(&c, &k, &value, cond)).await
    }

    async fn delete_record(&self, collection: &Collection, key: &RecordKey, cond: Precondition) -> Result<()> {
        let (c, k) = (collection.clone(), key.clone());
        self.blocking(move |s| s.delete(&c, &k, cond)).await
    }

    async fn list_records(
        &self,
        collection: &Collection,
        prefix: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page> {
        self.store.list(collection, prefix, limit, cursor)
    }

    async fn storage_usage(&self) -> Result<StorageUsage> {
        let usage = self.store.usage()?;
        Ok(StorageUsage { records: usage.records, bytes: usage.bytes, quota_bytes: self.store.quota_bytes() })
    }

    async fn set_quota(&self, quota_bytes: u64) -> Result<()> {
        self.store.set_quota_bytes(quota_bytes);
        Ok(())
    }

    async fn verify(&self) -> Result<IntegrityReport> {
        let engine = self.engine.as_str().to_owned();
        let usage = self.blocking(|s| s.verify()).await?;
        Ok(IntegrityReport { engine, records: usage.records, bytes: usage.bytes })
    }

    async fn export_records(&self, cursor: Option<&str>, limit: usize, max_bytes: usize) -> Result<ScanPage> {
        // A page reads and opens up to `max_bytes` of values: too much for the async runtime.
        let cursor = cursor.map(str::to_owned);
        self.blocking(move |s| s.scan(cursor.as_deref(), limit, max_bytes)).await
    }

    async fn import_records(&self, records: Vec<ImportRecord>) -> Result<StorageUsage> {
        let usage = self.blocking(move |s| s.import(records)).await?;
        Ok(StorageUsage { records: usage.records, bytes: usage.bytes, quota_bytes: self.store.quota_bytes() })
    }

    async fn append_audit(&self, entries: Vec<AuditEntry>, keep: u64) -> Result<()> {
        let encoded =
            entries.iter().map(|e| serde_json::to_vec(e).map_err(Error::internal)).collect::<Result<Vec<_>>>()?;
        self.blocking(move |s| s.append_log(&encoded, keep).map(drop)).await
    }

    async fn read_audit(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditRecord>> {
        self.store
            .read_log(before, limit)?
            .into_iter()
            .map(|(seq, bytes)| {
                Ok(AuditRecord { seq, entry: serde_json::from_slice(&bytes).map_err(Error::internal)? })
            })
            .collect()
    }
}
