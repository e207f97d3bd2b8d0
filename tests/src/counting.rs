//! A table decorator that counts store round trips, for benchmarks and tests that hold the
//! hot paths to a fixed number of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use voyage_core::ports::{Condition, Index, Item, Key, Page, Query, StoreError, Table, TxWrite};

pub struct CountingTable {
    inner: Arc<dyn Table>,
    calls: AtomicU64,
    items: AtomicU64,
}

impl CountingTable {
    pub fn new(inner: Arc<dyn Table>) -> Self {
        CountingTable {
            inner,
            calls: AtomicU64::new(0),
            items: AtomicU64::new(0),
        }
    }

    /// Round trips so far (every call is one request to DynamoDB).
    pub fn round_trips(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Items read so far (what a read costs beyond its round trip).
    pub fn items_read(&self) -> u64 {
        self.items.load(Ordering::SeqCst)
    }

    fn read(&self, n: usize) {
        self.items.fetch_add(n as u64, Ordering::SeqCst);
    }

    fn tick(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Table for CountingTable {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        self.tick();
        let got = self.inner.get(key).await?;
        self.read(got.iter().count());
        Ok(got)
    }
    async fn batch_get(&self, keys: &[Key]) -> Result<Vec<Item>, StoreError> {
        self.tick();
        let got = self.inner.batch_get(keys).await?;
        self.read(got.len());
        Ok(got)
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
        let page = self.inner.query(query).await?;
        self.read(page.items.len());
        Ok(page)
    }
    async fn query_index(&self, index: Index, query: Query) -> Result<Page, StoreError> {
        self.tick();
        let page = self.inner.query_index(index, query).await?;
        self.read(page.items.len());
        Ok(page)
    }
    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        self.tick();
        self.inner.purge_expired(now).await
    }
}
