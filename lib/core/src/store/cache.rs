//! An in-process cache of the two records every webhook dispatch reads before it writes: the
//! API key that authenticates the request (by its hash) and the company's webhook endpoints.
//!
//! Only for a process that makes every change to these records itself: the local system's
//! `voyage serve` (the other `voyage` commands create keys, which a cache never answers for
//! before it has read them, and change no endpoint). There the cache is exact: every change
//! through the [`Store`](super::Store) forgets the entry after its write commits, and a read
//! that raced a change is not kept (a generation counter, bumped by every change, must be the
//! same before the read and when its answer is kept). Entries also expire after [`FRESH`], a
//! bound on any change made outside the process. Lambda functions never cache: many
//! processes change the records there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::model::{ApiKey, WebhookEndpoint};

/// The longest an entry is answered from memory.
pub const FRESH: Duration = Duration::from_secs(5);
/// Most entries of each kind; a full map is emptied (the next reads fill it again).
const MOST: usize = 10_000;

/// The read cache (see the module docs).
#[derive(Debug, Default)]
pub struct ReadCache {
    generation: AtomicU64,
    keys: Mutex<HashMap<String, (ApiKey, Instant)>>,
    endpoints: Mutex<HashMap<String, (Vec<WebhookEndpoint>, Instant)>>,
}

/// The generation a read began at; its answer is kept only if no change came since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(u64);

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves a plain map behind: still usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn fresh<T: Clone>(map: &HashMap<String, (T, Instant)>, key: &str) -> Option<T> {
    map.get(key)
        .filter(|(_, at)| at.elapsed() < FRESH)
        .map(|(v, _)| v.clone())
}

impl ReadCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Taken before reading the store for an entry to keep.
    pub fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::Acquire))
    }

    fn keep<T>(
        &self,
        map: &Mutex<HashMap<String, (T, Instant)>>,
        read_at: Generation,
        key: &str,
        value: T,
    ) {
        let mut map = locked(map);
        // Checked under the lock that `forget` takes after bumping the generation: a change
        // either bumped it before this check (not kept) or removes the entry after it.
        if self.generation() != read_at {
            return;
        }
        if map.len() >= MOST {
            map.clear();
        }
        map.insert(key.to_string(), (value, Instant::now()));
    }

    fn forget<T>(&self, map: &Mutex<HashMap<String, (T, Instant)>>, key: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        locked(map).remove(key);
    }

    pub fn key(&self, hash: &str) -> Option<ApiKey> {
        fresh(&locked(&self.keys), hash)
    }

    /// Keeps a key read at `read_at` (never an absent one: a key made later must be found).
    pub fn keep_key(&self, read_at: Generation, key: &ApiKey) {
        self.keep(&self.keys, read_at, &key.key_hash, key.clone());
    }

    /// After a change to the key whose hash is `hash` has committed.
    pub fn forget_key(&self, hash: &str) {
        self.forget(&self.keys, hash);
    }

    pub fn endpoints(&self, company: &str) -> Option<Vec<WebhookEndpoint>> {
        fresh(&locked(&self.endpoints), company)
    }

    pub fn keep_endpoints(&self, read_at: Generation, company: &str, list: &[WebhookEndpoint]) {
        self.keep(&self.endpoints, read_at, company, list.to_vec());
    }

    /// After a change to one of the company's endpoints has committed (or failed: forgetting
    /// is always safe).
    pub fn forget_endpoints(&self, company: &str) {
        self.forget(&self.endpoints, company);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{Condition, Index, Item, Key, Page, Query, StoreError, TxWrite};

    fn key(hash: &str) -> ApiKey {
        ApiKey {
            id: "key_1".into(),
            company_id: "acme".into(),
            key_hash: hash.into(),
            internal: false,
            description: None,
            created_at: chrono::Utc::now(),
            revoked_at: None,
        }
    }

    /// A table whose puts wait for a gate, then write whether or not anyone still waits for
    /// them, as SQLite's writer thread does.
    struct Gated {
        inner: std::sync::Arc<crate::ports::memory::MemoryTable>,
        open: std::sync::Arc<tokio::sync::Semaphore>,
    }

    #[async_trait::async_trait]
    impl crate::ports::Table for Gated {
        async fn get(&self, k: &Key) -> Result<Option<Item>, StoreError> {
            self.inner.get(k).await
        }
        async fn batch_get(&self, k: &[Key]) -> Result<Vec<Item>, StoreError> {
            self.inner.batch_get(k).await
        }
        async fn put(&self, item: Item, c: Condition) -> Result<(), StoreError> {
            let (inner, open) = (self.inner.clone(), self.open.clone());
            tokio::spawn(async move {
                let _pass = open.acquire().await;
                inner.put(item, c).await
            })
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
        }
        async fn delete(&self, k: &Key, c: Condition) -> Result<(), StoreError> {
            self.inner.delete(k, c).await
        }
        async fn batch_write(&self, p: Vec<Item>, d: Vec<Key>) -> Result<(), StoreError> {
            self.inner.batch_write(p, d).await
        }
        async fn transact(&self, w: Vec<TxWrite>) -> Result<(), StoreError> {
            self.inner.transact(w).await
        }
        async fn query(&self, q: Query) -> Result<Page, StoreError> {
            self.inner.query(q).await
        }
        async fn query_index(&self, i: Index, q: Query) -> Result<Page, StoreError> {
            self.inner.query_index(i, q).await
        }
        async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
            self.inner.purge_expired(now).await
        }
    }

    #[tokio::test]
    async fn an_endpoint_change_whose_caller_stopped_waiting_is_still_seen_once_written() {
        let open = std::sync::Arc::new(tokio::sync::Semaphore::new(1000));
        let table = Gated {
            inner: std::sync::Arc::new(crate::ports::memory::MemoryTable::new()),
            open: open.clone(),
        };
        let store = crate::store::Store::new(
            std::sync::Arc::new(table),
            std::sync::Arc::new(crate::ports::SystemClock),
        )
        .with_read_cache();
        let endpoint: WebhookEndpoint = serde_json::from_value(serde_json::json!({
            "id": "whk_1", "company_id": "acme", "url": "https://example.com/hook",
            "events": ["*"], "status": "active", "secrets": [],
            "created_at": "2026-11-30T00:00:00Z", "updated_at": "2026-11-30T00:00:00Z",
            "version": 0
        }))
        .unwrap();
        let mut endpoint = store.create_endpoint(&endpoint).await.unwrap();
        assert_eq!(store.all_endpoints("acme").await.unwrap().len(), 1);
        // The gate shuts; a disabling write is sent, and its caller gives up waiting.
        let held = open.acquire_many(1000).await.unwrap();
        endpoint.status = crate::model::EndpointStatus::Disabled;
        let gave_up = tokio::time::timeout(
            Duration::from_millis(50),
            store.update_endpoint(&mut endpoint),
        )
        .await;
        assert!(gave_up.is_err(), "the write was not held");
        // The write goes through afterwards; the list read next is the list written.
        drop(held);
        // Well within FRESH: an entry kept from before would still be answered.
        let deadline = Instant::now() + FRESH / 4;
        loop {
            let now = store.all_endpoints("acme").await.unwrap();
            if now[0].status == crate::model::EndpointStatus::Disabled {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cache kept the endpoint as it was"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn a_read_that_raced_a_change_is_not_kept() {
        let cache = ReadCache::new();
        let before = cache.generation();
        cache.forget_key("h");
        cache.keep_key(before, &key("h"));
        assert!(cache.key("h").is_none());
    }

    #[test]
    fn a_change_forgets_what_was_kept() {
        let cache = ReadCache::new();
        cache.keep_key(cache.generation(), &key("h"));
        assert!(cache.key("h").is_some());
        cache.forget_key("h");
        assert!(cache.key("h").is_none());
        cache.keep_endpoints(cache.generation(), "acme", &[]);
        assert_eq!(cache.endpoints("acme"), Some(vec![]));
        cache.forget_endpoints("acme");
        assert!(cache.endpoints("acme").is_none());
    }
}
