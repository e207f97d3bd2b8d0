//! A table decorator that counts store round trips, for benchmarks and tests that hold the
//! hot paths to a fixed number of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use voyage_core::ports::{Condition, Index, Item, Key, Page, Query, StoreError, Table, TxWrite};

pub struct CountingTable {
    inner: Arc<dyn Table>,
    calls: AtomicU64,
}

impl CountingTable {
    pub fn new(inner: Arc<dyn Table>) -> Self {
        CountingTable {
            inner,
            calls: AtomicU64::new(0),
        }
    }

    /// Round trips so far (every call is one request to DynamoDB).
    pub fn round_trips(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn tick(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Table for CountingTable {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        self.tick();
        self.inner.get(key).await
    }
    async fn batch_get(&self, keys: &[Key]) -> Result<Vec<Item>, StoreError> {
        self.tick();
        self.inner.batch_get(keys).await
    }
    async fn put(&self, item: Item, condition: Condition) -> Result<(), StoreError> {
        self.tick();
        self.inner.put(item, condition).await
    }
    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError> {
        self.tick();
        self.inner.delete(key, condition).await
    }
    async fn batch_write(&self, puts: Vec<Item>, deletes: Vec<Key>) -> Result<(), StoreError> {
        self.tick();
        self.inner.batch_write(puts, deletes).await
    }
    async fn transact(&self, writes: Vec<TxWrite>) -> Result<(), StoreError> {
        self.tick();
        self.inner.transact(writes).await
    }
    async fn query(&self, query: Query) -> Result<Page, StoreError> {
        self.tick();
        self.inner.query(query).await
    }
    async fn query_index(&self, index: Index, query: Query) -> Result<Page, StoreError> {
        self.tick();
        self.inner.query_index(index, query).await
    }
    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        self.tick();
        self.inner.purge_expired(now).await
    }
}
