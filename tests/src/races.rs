//! Lost races on demand: a table that forwards to a world's and refuses the next `n`
//! transactions writing a session record as a lost race (the condition failed), as a delta
//! round or another change writing the same session at that moment would make them fail.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use voyage_core::deps::Deps;
use voyage_core::ports::{
    Condition, Index, Item, Key, Page, Query, StoreError, SystemClock, Table, TxWrite,
};
use voyage_core::store::Store;

/// Forwards to `world`'s table; after `skip` session-writing transactions pass, the next
/// `left` lose.
pub struct LosesRaces {
    world: Arc<Deps>,
    skip: AtomicUsize,
    left: AtomicUsize,
}

#[async_trait]
impl Table for LosesRaces {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        self.world.store.table().get(key).await
    }
    async fn batch_get(&self, keys: &[Key]) -> Result<Vec<Item>, StoreError> {
        self.world.store.table().batch_get(keys).await
    }
    async fn put(&self, item: Item, condition: Condition) -> Result<(), StoreError> {
        self.world.store.table().put(item, condition).await
    }
    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError> {
        self.world.store.table().delete(key, condition).await
    }
    async fn batch_write(&self, puts: Vec<Item>, deletes: Vec<Key>) -> Result<(), StoreError> {
        self.world.store.table().batch_write(puts, deletes).await
    }
    async fn transact(&self, writes: Vec<TxWrite>) -> Result<(), StoreError> {
        let writes_session = writes
            .iter()
            .any(|w| matches!(w, TxWrite::Put(item, _) if item.key.sk.starts_with("SESS#")));
        let take = |n: usize| n.checked_sub(1);
        if writes_session
            && self
                .skip
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, take)
                .is_ok()
        {
            return self.world.store.table().transact(writes).await;
        }
        if writes_session
            && self
                .left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, take)
                .is_ok()
        {
            return Err(StoreError::ConditionFailed);
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
    let mut deps: Deps = (**world).clone();
    deps.store = Store::new(
        Arc::new(LosesRaces {
            world: world.clone(),
            skip: AtomicUsize::new(skip),
            left: AtomicUsize::new(races),
        }),
        Arc::new(SystemClock),
    );
    deps
}
