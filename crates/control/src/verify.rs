//! The offline integrity check behind `selfcloud verify`: the registry file, then every instance
//! it names, opened the normal way (which runs the engine's crash recovery) and checked by its
//! store. Control still reads no record: the instance runs the check and answers totals.

use crate::instances::{instance_dir, INSTANCES_DIR};
use crate::Control;
use selfcloud_core::{Error, InstanceId, Result};
use selfcloud_instance::IntegrityReport;
use std::collections::BTreeSet;
use std::path::Path;

/// One instance's result.
#[derive(Clone, Debug)]
pub struct InstanceCheck {
    pub id: InstanceId,
    /// The totals when the check passed; why it failed otherwise.
    pub outcome: std::result::Result<IntegrityReport, String>,
}

/// Everything `verify_home` found.
#[derive(Clone, Debug)]
pub struct HomeReport {
    /// The registry's own SQLite integrity check.
    pub registry: std::result::Result<(), String>,
    pub instances: Vec<InstanceCheck>,
    /// Instance directories no registry row names. Sign-up writes the directory before the row,
    /// so a crash mid-sign-up leaves one; it is never opened, so it is reported, not a failure.
    pub unreferenced: Vec<InstanceId>,
}

impl HomeReport {
    /// Failed checks: the registry's and each instance's.
    pub fn failures(&self) -> usize {
        usize::from(self.registry.is_err()) + self.instances.iter().filter(|c| c.outcome.is_err()).count()
    }
}

/// The operator-facing cause: the inside detail when there is one (this is not a client answer).
fn reason(e: Error) -> String {
    e.detail.unwrap_or(e.message)
}

/// Instance ids named by directories under `<home>/instances/<shard>/`; other names are skipped.
fn instance_dirs(home: &Path) -> Result<BTreeSet<InstanceId>> {
    let root = home.join(INSTANCES_DIR);
    let read = |dir: &Path| std::fs::read_dir(dir).map_err(|e| Error::internal(format!("read {}: {e}", dir.display())));
    let mut ids = BTreeSet::new();
    for shard in read(&root)? {
        let shard = shard.map_err(Error::internal)?.path();
        if !shard.is_dir() {
            continue;
        }
        for entry in read(&shard)? {
            let entry = entry.map_err(Error::internal)?;
            let parsed = entry.file_name().to_str().and_then(|n| n.parse::<InstanceId>().ok());
            // Only a directory exactly where `instance_dir` would put it counts.
            if let Some(id) = parsed.filter(|id| instance_dir(home, *id) == entry.path()) {
                ids.insert(id);
            }
        }
    }
    Ok(ids)
}

impl Control {
    /// Checks the registry and every instance it names, one after another. Meant for a home no
    /// server is using (a running server holds each awake instance's directory lock; this waits
    /// for it, then wakes every instance in turn).
    pub async fn verify_home(&self) -> Result<HomeReport> {
        let registry = self.blocking(|r| r.integrity_check()).await.map_err(reason);
        let ids = self.blocking(|r| r.instance_ids()).await?;
        let home = self.config.home.clone();
        let on_disk = tokio::task::spawn_blocking(move || instance_dirs(&home)).await.map_err(Error::internal)??;
        let mut instances = Vec::with_capacity(ids.len());
        for &id in &ids {
            let outcome = match self.instance(id).await {
                Ok(instance) => crate::system::System(&instance).verify().await.map_err(reason),
                Err(e) => Err(format!("cannot open: {}", reason(e))),
            };
            instances.push(InstanceCheck { id, outcome });
        }
        let known: BTreeSet<InstanceId> = ids.into_iter().collect();
        let unreferenced = on_disk.difference(&known).copied().collect();
        Ok(HomeReport { registry, instances, unreferenced })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_placed_instance_dirs_are_listed() {
        let home = tempfile::tempdir().unwrap();
        let id: InstanceId = "ins_ab0123456789abcdef0123456789abcd".parse().unwrap();
        std::fs::create_dir_all(instance_dir(home.path(), id)).unwrap();
        // In the wrong shard, and not an id at all: both ignored.
        let misplaced = home.path().join(INSTANCES_DIR).join("cd").join(id.to_string());
        std::fs::create_dir_all(misplaced).unwrap();
        std::fs::create_dir_all(home.path().join(INSTANCES_DIR).join("ab").join("notes")).unwrap();
        assert_eq!(instance_dirs(home.path()).unwrap().into_iter().collect::<Vec<_>>(), vec![id]);
    }
}
