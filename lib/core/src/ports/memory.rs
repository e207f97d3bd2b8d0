//! In-memory adapters: the reference behaviour of each port, for unit tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::table::{
    check_batch, check_transaction, page_of, prefix_end, Condition, Index, Item, Key, Page, Query,
    Resume, StoreError, Table, TxWrite, BATCH_GET_LIMIT,
};

#[derive(Default)]
pub struct MemoryTable {
    items: Mutex<BTreeMap<Key, Item>>,
}

impl MemoryTable {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<Key, Item>>, StoreError> {
        self.items
            .lock()
            .map_err(|_| StoreError::Unavailable("memory table poisoned".into()))
    }
}

/// The sort key range a query covers: `[max(prefix, lower), min(upper, prefix_end))`.
fn in_range(sk: &str, q: &Query) -> bool {
    sk.starts_with(q.prefix.as_str())
        && sk < prefix_end(&q.prefix).as_str()
        && q.lower.as_deref().is_none_or(|l| sk >= l)
        && q.upper.as_deref().is_none_or(|u| sk <= u)
}

fn bad_cursor() -> StoreError {
    StoreError::Corrupt("query cursor is not one this store issued".into())
}

#[async_trait]
impl Table for MemoryTable {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        Ok(self.lock()?.get(key).cloned())
    }

    async fn batch_get(&self, keys: &[Key]) -> Result<Vec<Item>, StoreError> {
        if keys.len() > BATCH_GET_LIMIT {
            return Err(StoreError::Unavailable(format!(
                "batch get of {} keys exceeds {BATCH_GET_LIMIT}",
                keys.len()
            )));
        }
        let items = self.lock()?;
        let unique: std::collections::BTreeSet<&Key> = keys.iter().collect();
        Ok(unique
            .into_iter()
            .filter_map(|k| items.get(k).cloned())
            .collect())
    }

    async fn put(&self, item: Item, condition: Condition) -> Result<(), StoreError> {
        let mut items = self.lock()?;
        if !condition.holds(items.get(&item.key).map(|i| i.version)) {
            return Err(StoreError::ConditionFailed);
        }
        items.insert(item.key.clone(), item);
        Ok(())
    }

    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError> {
        let mut items = self.lock()?;
        if !condition.holds(items.get(key).map(|i| i.version)) {
            return Err(StoreError::ConditionFailed);
        }
        items.remove(key);
        Ok(())
    }

    async fn batch_write(&self, puts: Vec<Item>, deletes: Vec<Key>) -> Result<(), StoreError> {
        check_batch(&puts, &deletes)?;
        let mut items = self.lock()?;
        for k in deletes {
            items.remove(&k);
        }
        for i in puts {
            items.insert(i.key.clone(), i);
        }
        Ok(())
    }

    async fn transact(&self, writes: Vec<TxWrite>) -> Result<(), StoreError> {
        check_transaction(&writes)?;
        let mut items = self.lock()?;
        for w in &writes {
            if !w.condition().holds(items.get(w.key()).map(|i| i.version)) {
                return Err(StoreError::ConditionFailed);
            }
        }
        for w in writes {
            match w {
                TxWrite::Put(i, _) => {
                    items.insert(i.key.clone(), i);
                }
                TxWrite::Delete(k, _) => {
                    items.remove(&k);
                }
                TxWrite::Check(..) => {}
            }
        }
        Ok(())
    }

    async fn query(&self, q: Query) -> Result<Page, StoreError> {
        let after = match &q.cursor {
            Some(c) => Some(Resume::decode(c).ok_or_else(bad_cursor)?.sk),
            None => None,
        };
        let items = self.lock()?;
        let in_partition = items
            .range(Key::new(q.pk.clone(), q.prefix.clone())..)
            .take_while(|(k, _)| k.pk == q.pk)
            .filter(|(k, _)| in_range(&k.sk, &q))
            .map(|(_, i)| i);
        let after_cursor = |i: &&Item| {
            after.as_deref().is_none_or(|a| {
                if q.descending {
                    i.key.sk.as_str() < a
                } else {
                    i.key.sk.as_str() > a
                }
            })
        };
        let found: Vec<Item> = if q.descending {
            let mut all: Vec<&Item> = in_partition.filter(after_cursor).collect();
            all.reverse();
            all.into_iter().take(q.limit.max(1) + 1).cloned().collect()
        } else {
            in_partition
                .filter(after_cursor)
                .take(q.limit.max(1) + 1)
                .cloned()
                .collect()
        };
        Ok(page_of(found, q.limit, None, false))
    }

    async fn query_index(&self, index: Index, q: Query) -> Result<Page, StoreError> {
        let after = match &q.cursor {
            Some(c) => {
                let r = Resume::decode(c).ok_or_else(bad_cursor)?;
                Some((r.isk.unwrap_or_default(), r.pk, r.sk))
            }
            None => None,
        };
        let items = self.lock()?;
        let mut found: Vec<(String, Item)> = items
            .values()
            .filter_map(|i| {
                let ik = match index {
                    Index::Gsi1 => i.gsi1.as_ref(),
                    Index::Gsi2 => i.gsi2.as_ref(),
                }?;
                (ik.pk == q.pk && in_range(&ik.sk, &q)).then(|| (ik.sk.clone(), i.clone()))
            })
            .filter(|(isk, i)| {
                after.as_ref().is_none_or(|a| {
                    let here = (isk.as_str(), i.key.pk.as_str(), i.key.sk.as_str());
                    let there = (a.0.as_str(), a.1.as_str(), a.2.as_str());
                    if q.descending {
                        here < there
                    } else {
                        here > there
                    }
                })
            })
            .collect();
        found.sort_by(|a, b| (&a.0, &a.1.key).cmp(&(&b.0, &b.1.key)));
        if q.descending {
            found.reverse();
        }
        found.truncate(q.limit.max(1) + 1);
        Ok(page_of(
            found.into_iter().map(|(_, i)| i).collect(),
            q.limit,
            Some(index),
            false,
        ))
    }

    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        let mut items = self.lock()?;
        let before = items.len();
        items.retain(|_, i| i.expires_at.is_none_or(|t| t > now));
        Ok((before - items.len()) as u64)
    }
}
