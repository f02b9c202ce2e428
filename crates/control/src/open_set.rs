//! The instances open in this process: an LRU bounds how many are kept open, and a map of weak
//! handles finds one the LRU has let go while a request still holds it. An instance is thus
//! never opened twice at once, which RocksDB forbids (its lock) and SQLite would only waste.

use lru::LruCache;
use selfcloud_core::InstanceId;
use selfcloud_instance::Instance;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Weak};

pub(crate) struct OpenSet {
    lru: LruCache<InstanceId, Arc<dyn Instance>>,
    alive: HashMap<InstanceId, Weak<dyn Instance>>,
}

impl OpenSet {
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity.max(1)).expect("max(1) is non-zero");
        OpenSet { lru: LruCache::new(capacity), alive: HashMap::new() }
    }

    /// The open instance, marked as just used.
    pub fn get(&mut self, id: InstanceId) -> Option<Arc<dyn Instance>> {
        if let Some(i) = self.lru.get(&id) {
            return Some(i.clone());
        }
        let revived = self.alive.get(&id)?.upgrade()?;
        self.lru.put(id, revived.clone());
        Some(revived)
    }

    /// The open instance, without marking it used.
    pub fn peek(&self, id: InstanceId) -> Option<Arc<dyn Instance>> {
        self.lru.peek(&id).cloned().or_else(|| self.alive.get(&id)?.upgrade())
    }

    pub fn put(&mut self, id: InstanceId, instance: Arc<dyn Instance>) {
        self.alive.insert(id, Arc::downgrade(&instance));
        self.lru.put(id, instance);
        // Handles of instances closed since are dropped now and then, so the map stays small.
        if self.alive.len() > 2 * self.lru.cap().get() {
            self.alive.retain(|_, weak| weak.strong_count() > 0);
        }
    }

    /// Forgets the instance (it is being deleted); a request still holding it finishes with it.
    pub fn remove(&mut self, id: InstanceId) {
        self.lru.pop(&id);
        self.alive.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use crate::{Control, ControlConfig};
    use selfcloud_core::config::KdfParams;
    use selfcloud_instance::EngineKind;
    use std::sync::Arc;

    #[tokio::test]
    async fn an_instance_the_lru_let_go_is_not_opened_twice_while_held() {
        let home = tempfile::tempdir().unwrap();
        let mut config = ControlConfig::new(home.path());
        (config.kdf, config.open_instances, config.store_engine) =
            (KdfParams::INSECURE_FOR_TESTS, 1, EngineKind::Rocksdb);
        let control = Control::open(config, 1_000).unwrap();
        let ada = control.sign_up("ada", "correct horse battery", 1_000).await.unwrap().instance_id;
        let bob = control.sign_up("bob", "correct horse battery", 1_000).await.unwrap().instance_id;

        // A request holds Ada's instance while Bob's pushes it out of the one-slot LRU.
        let held = control.instance(ada).await.unwrap();
        control.instance(bob).await.unwrap();
        // Opening Ada's store again would fail on RocksDB's lock; the held handle is found instead.
        let again = control.instance(ada).await.unwrap();
        assert!(Arc::ptr_eq(&held, &again));
        // Once nobody holds it, it closes, and a later request opens it afresh.
        drop((held, again));
        control.instance(bob).await.unwrap();
        assert!(control.open.lock().peek(ada).is_none());
        assert_eq!(control.instance(ada).await.unwrap().id(), ada);
    }
}
