//! A table decorator whose index queries see nothing yet: DynamoDB's global secondary
//! indexes right after a write (they are eventually consistent; base-table reads with
//! `ConsistentRead` are not), for tests of the paths that must not depend on them.

use std::sync::Arc;

use async_trait::async_trait;
use voyage_core::ports::{Condition, Index, Item, Key, Page, Query, StoreError, Table, TxWrite};

pub struct LaggingIndexes {
    inner: Arc<dyn Table>,
}

impl LaggingIndexes {
    pub fn new(inner: Arc<dyn Table>) -> Self {
        LaggingIndexes { inner }
    }
}

#[async_trait]
impl Table for LaggingIndexes {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        self.inner.get(key).await
    }
    async fn batch_get(&self, keys: &[Key]) -> Result<Vec<Item>, StoreError> {
        self.inner.batch_get(keys).await
    }
    async fn put(&self, item: Item, condition: Condition) -> Result<(), StoreError> {
        self.inner.put(item, condition).await
    }
    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError> {
        self.inner.delete(key, condition).await
    }
    async fn batch_write(&self, puts: Vec<Item>, deletes: Vec<Key>) -> Result<(), StoreError> {
        self.inner.batch_write(puts, deletes).await
    }
    async fn transact(&self, writes: Vec<TxWrite>) -> Result<(), StoreError> {
        self.inner.transact(writes).await
    }
    async fn query(&self, query: Query) -> Result<Page, StoreError> {
        self.inner.query(query).await
    }
    /// Nothing written has reached the index yet.
    async fn query_index(&self, _index: Index, _query: Query) -> Result<Page, StoreError> {
        Ok(Page {
            items: Vec::new(),
            next: None,
        })
    }
    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        self.inner.purge_expired(now).await
    }
}
