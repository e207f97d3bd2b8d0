//! Lost races on demand, through a table that forwards to a world's:
//! - [`losing_races`]: the next `n` transactions writing a session record are refused as a
//!   lost race (the condition failed), as a delta round or another change writing the same
//!   session at that moment would make them fail;
//! - [`losing_every_session_put`]: every single conditional write of a session record loses
//!   (the booking commands' writes);
//! - [`overtaken_at_mapping`]: other work runs to its end just before the first transaction
//!   writing a mapping (another writer finishing first), which that transaction then loses
//!   for real if the work wrote the same records;
//! - [`overtaken_at_session_put`]: the same, just before the first single write of a session
//!   record (a booking command's compare-and-set).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use voyage_core::deps::Deps;
use voyage_core::ports::{
    Condition, Index, Item, Key, Page, Query, StoreError, SystemClock, Table, TxWrite,
};
use voyage_core::store::Store;

/// Work run to its end just before a transaction, as another writer would finish first.
pub type Meanwhile = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Forwards to `world`'s table. After `skip` session-writing transactions pass, the next
/// `left` lose; the first mapping-writing transaction first runs `meanwhile`.
pub struct Racing {
    world: Arc<Deps>,
    skip: AtomicUsize,
    left: AtomicUsize,
    meanwhile: Mutex<Option<Meanwhile>>,
    /// Run before the first put of a session record.
    meanwhile_at_put: Mutex<Option<Meanwhile>>,
    session_puts_lose: bool,
}

impl Racing {
    /// Forwards everything, loses nothing.
    fn new(world: &Arc<Deps>) -> Racing {
        Racing {
            world: world.clone(),
            skip: AtomicUsize::new(0),
            left: AtomicUsize::new(0),
            meanwhile: Mutex::new(None),
            meanwhile_at_put: Mutex::new(None),
            session_puts_lose: false,
        }
    }

    fn deps(world: &Arc<Deps>, racing: Racing) -> Deps {
        let mut deps: Deps = (**world).clone();
        deps.store = Store::new(Arc::new(racing), Arc::new(SystemClock));
        deps
    }
}

#[async_trait]
impl Table for Racing {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        self.world.store.table().get(key).await
    }
    async fn batch_get(&self, keys: &[Key]) -> Result<Vec<Item>, StoreError> {
        self.world.store.table().batch_get(keys).await
    }
    async fn put(&self, item: Item, condition: Condition) -> Result<(), StoreError> {
        if item.key.sk.starts_with("SESS#") {
            if self.session_puts_lose {
                return Err(StoreError::ConditionFailed);
            }
            let meanwhile = self.meanwhile_at_put.lock().ok().and_then(|mut m| m.take());
            if let Some(work) = meanwhile {
                work.await;
            }
        }
        self.world.store.table().put(item, condition).await
    }
    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError> {
        self.world.store.table().delete(key, condition).await
    }
    async fn batch_write(&self, puts: Vec<Item>, deletes: Vec<Key>) -> Result<(), StoreError> {
        self.world.store.table().batch_write(puts, deletes).await
    }
    async fn transact(&self, writes: Vec<TxWrite>) -> Result<(), StoreError> {
        let writes_a = |prefix: &str| {
            writes
                .iter()
                .any(|w| matches!(w, TxWrite::Put(item, _) if item.key.sk.starts_with(prefix)))
        };
        if writes_a("MAP#") {
            let meanwhile = self.meanwhile.lock().ok().and_then(|mut m| m.take());
            if let Some(work) = meanwhile {
                work.await;
            }
        }
        if writes_a("SESS#") {
            let take = |n: usize| n.checked_sub(1);
            let skipped = self
                .skip
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, take)
                .is_ok();
            if !skipped
                && self
                    .left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, take)
                    .is_ok()
            {
                return Err(StoreError::ConditionFailed);
            }
        }
        self.world.store.table().transact(writes).await
    }
    async fn query(&self, query: Query) -> Result<Page, StoreError> {
        self.world.store.table().query(query).await
    }
    async fn query_index(&self, index: Index, query: Query) -> Result<Page, StoreError> {
        self.world.store.table().query_index(index, query).await
    }
    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        self.world.store.table().purge_expired(now).await
    }
}

/// `world`'s dependencies over its table, losing the next `races` session writes.
pub fn losing_races(world: &Arc<Deps>, races: usize) -> Deps {
    losing_races_after(world, 0, races)
}

/// [`losing_races`] once `skip` session writes have passed.
pub fn losing_races_after(world: &Arc<Deps>, skip: usize, races: usize) -> Deps {
    Racing::deps(
        world,
        Racing {
            skip: AtomicUsize::new(skip),
            left: AtomicUsize::new(races),
            ..Racing::new(world)
        },
    )
}

/// `world`'s dependencies over its table, running `meanwhile` before the first mapping
/// write.
pub fn overtaken_at_mapping(world: &Arc<Deps>, meanwhile: Meanwhile) -> Deps {
    Racing::deps(
        world,
        Racing {
            meanwhile: Mutex::new(Some(meanwhile)),
            ..Racing::new(world)
        },
    )
}

/// `world`'s dependencies over its table, running `meanwhile` before the first single put
/// of a session record.
pub fn overtaken_at_session_put(world: &Arc<Deps>, meanwhile: Meanwhile) -> Deps {
    Racing::deps(
        world,
        Racing {
            meanwhile_at_put: Mutex::new(Some(meanwhile)),
            ..Racing::new(world)
        },
    )
}

/// `world`'s dependencies over its table, where every put of a session record loses.
pub fn losing_every_session_put(world: &Arc<Deps>) -> Deps {
    Racing::deps(
        world,
        Racing {
            session_puts_lose: true,
            ..Racing::new(world)
        },
    )
}
