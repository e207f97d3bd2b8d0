//! The storage port: a single-table, key-sorted item store with conditional writes.
//!
//! Why one primitive instead of one trait per record type: every record (connection, cursor,
//! mapping, delivery, ...) is stored the same way in DynamoDB's single-table layout, and the
//! semantics that matter (create-if-absent, compare-and-set on a version, batch reads,
//! ordered prefix queries, two secondary indexes, TTL) are the same for all of them. Putting
//! them in one narrow trait means the typed stores in [`crate::store`] are written once, and
//! the contract suite proves each adapter implements the primitive identically.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The write's condition did not hold (item exists / is absent / has another version).
    #[error("condition failed")]
    ConditionFailed,
    /// The backing store could not be reached or refused the request.
    #[error("{0}")]
    Unavailable(String),
    /// A stored item could not be decoded.
    #[error("{0}")]
    Corrupt(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    pub pk: String,
    pub sk: String,
}

impl Key {
    pub fn new(pk: impl Into<String>, sk: impl Into<String>) -> Self {
        Key {
            pk: pk.into(),
            sk: sk.into(),
        }
    }
}

/// One stored record. `data` is the record's JSON; the other fields are what the store
/// needs to find, order, expire and version it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: Key,
    /// First secondary index (pk, sk), absent when the item is not indexed.
    pub gsi1: Option<Key>,
    /// Second secondary index, e.g. the due time of a delivery for the sweep.
    pub gsi2: Option<Key>,
    /// Incremented by the typed stores on every conditional update.
    pub version: u64,
    /// Unix seconds after which the item is expired (DynamoDB TTL attribute `ttl`).
    pub expires_at: Option<i64>,
    pub data: String,
}

impl Item {
    pub fn new(key: Key, data: String) -> Self {
        Item {
            key,
            gsi1: None,
            gsi2: None,
            version: 1,
            expires_at: None,
            data,
        }
    }
}

/// The condition a write must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    None,
    /// No item with this key exists (create).
    NotExists,
    /// An item with this key exists (update / delete of a known item).
    Exists,
    /// An item with this key exists and has exactly this version.
    Version(u64),
}

impl Condition {
    /// Whether the condition holds given the version of the stored item, if any.
    pub fn holds(self, existing_version: Option<u64>) -> bool {
        match self {
            Condition::None => true,
            Condition::NotExists => existing_version.is_none(),
            Condition::Exists => existing_version.is_some(),
            Condition::Version(v) => existing_version == Some(v),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    Gsi1,
    Gsi2,
}

/// An ordered range read within one partition: items whose sort key starts with `prefix`
/// (and, when set, is at least `lower` and at most `upper`), ascending, resuming after
/// `cursor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub pk: String,
    pub prefix: String,
    /// Inclusive lower bound on the sort key, for time-ranged reads (`start >= from`), so a
    /// read covers the range it needs rather than everything before it.
    pub lower: Option<String>,
    /// Inclusive upper bound on the sort key, for time-ordered sweeps (`due <= now`).
    pub upper: Option<String>,
    pub limit: usize,
    /// The `next` of a previous page.
    pub cursor: Option<String>,
    /// Newest (greatest sort key) first.
    pub descending: bool,
}

impl Query {
    pub fn prefix(pk: impl Into<String>, prefix: impl Into<String>, limit: usize) -> Self {
        Query {
            pk: pk.into(),
            prefix: prefix.into(),
            lower: None,
            upper: None,
            limit,
            cursor: None,
            descending: false,
        }
    }

    /// Sort keys in `[lower, upper]` within `prefix` (both bounds inclusive).
    pub fn between(
        pk: impl Into<String>,
        prefix: impl Into<String>,
        lower: impl Into<String>,
        upper: impl Into<String>,
        limit: usize,
    ) -> Self {
        let mut q = Query::prefix(pk, prefix, limit);
        q.lower = Some(lower.into());
        q.upper = Some(upper.into());
        q
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Item>,
    /// Opaque; present when more items may follow.
    pub next: Option<String>,
}

/// One write of an all-or-nothing transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxWrite {
    Put(Item, Condition),
    Delete(Key, Condition),
    /// A condition on an item the transaction does not write (DynamoDB's `ConditionCheck`):
    /// when it fails, nothing is written. Never [`Condition::None`]
    /// ([`check_transaction`] refuses it).
    Check(Key, Condition),
}

impl TxWrite {
    /// The item this write names.
    pub fn key(&self) -> &Key {
        match self {
            TxWrite::Put(i, _) => &i.key,
            TxWrite::Delete(k, _) | TxWrite::Check(k, _) => k,
        }
    }

    /// The condition the item must satisfy.
    pub fn condition(&self) -> Condition {
        match self {
            TxWrite::Put(_, c) | TxWrite::Delete(_, c) | TxWrite::Check(_, c) => *c,
        }
    }
}

/// Most items a single `batch_get` / `batch_write` call accepts; callers chunk larger sets.
/// Matches DynamoDB's `BatchWriteItem` limit so batching behaves the same everywhere.
pub const BATCH_WRITE_LIMIT: usize = 25;
pub const BATCH_GET_LIMIT: usize = 100;
pub const TRANSACTION_LIMIT: usize = 100;

#[async_trait]
pub trait Table: Send + Sync + 'static {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError>;

    /// Items that exist among `keys` (at most [`BATCH_GET_LIMIT`]; a key named twice is read
    /// once), in no particular order.
    async fn batch_get(&self, keys: &[Key]) -> Result<Vec<Item>, StoreError>;

    async fn put(&self, item: Item, condition: Condition) -> Result<(), StoreError>;

    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError>;

    /// Unconditional puts and deletes, at most [`BATCH_WRITE_LIMIT`] in all, no key twice.
    async fn batch_write(&self, puts: Vec<Item>, deletes: Vec<Key>) -> Result<(), StoreError>;

    /// Conditional writes that all happen or none do (at most [`TRANSACTION_LIMIT`]).
    async fn transact(&self, writes: Vec<TxWrite>) -> Result<(), StoreError>;

    async fn query(&self, query: Query) -> Result<Page, StoreError>;

    /// Like `query` over a secondary index: `query.pk` / `prefix` refer to the index keys.
    async fn query_index(&self, index: Index, query: Query) -> Result<Page, StoreError>;

    /// Physically remove items expired before `now` (unix seconds). DynamoDB does this by
    /// itself through TTL and answers 0; the embedded store needs a sweep.
    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError>;
}

/// The position after which a query resumes, shared by all adapters so the cursor format is
/// the same everywhere (URL-safe base64 of JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub pk: String,
    pub sk: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isk: Option<String>,
}

impl Resume {
    pub fn encode(&self) -> String {
        use base64::Engine;
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// `None` for a cursor that was not made by [`Resume::encode`] (callers answer 422).
    pub fn decode(cursor: &str) -> Option<Resume> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn of(item: &Item, index: Option<Index>) -> Resume {
        let ik = match index {
            Some(Index::Gsi1) => item.gsi1.as_ref(),
            Some(Index::Gsi2) => item.gsi2.as_ref(),
            None => None,
        };
        Resume {
            pk: item.key.pk.clone(),
            sk: item.key.sk.clone(),
            ipk: ik.map(|k| k.pk.clone()),
            isk: ik.map(|k| k.sk.clone()),
        }
    }
}

/// A page from `items` read with a `limit + 1` look-ahead (or cut short by the backend when
/// `truncated`): at most `limit` items, and a resume cursor when more may follow.
pub fn page_of(mut items: Vec<Item>, limit: usize, index: Option<Index>, truncated: bool) -> Page {
    let limit = limit.max(1);
    let more = items.len() > limit || truncated;
    items.truncate(limit);
    let next = if more {
        items.last().map(|i| Resume::of(i, index).encode())
    } else {
        None
    };
    Page { items, next }
}

/// The smallest string greater than every string starting with `prefix`, for range scans.
/// Keys are ASCII in practice; U+10FFFF sorts after every valid UTF-8 sequence.
pub fn prefix_end(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 4);
    s.push_str(prefix);
    s.push('\u{10FFFF}');
    s
}

/// Checks that a batch names no key twice: DynamoDB refuses such a batch, so all do.
pub fn check_batch(puts: &[Item], deletes: &[Key]) -> Result<(), StoreError> {
    if puts.len() + deletes.len() > BATCH_WRITE_LIMIT {
        return Err(StoreError::Unavailable(format!(
            "batch of {} writes exceeds {BATCH_WRITE_LIMIT}",
            puts.len() + deletes.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for k in puts.iter().map(|i| &i.key).chain(deletes.iter()) {
        if !seen.insert(k) {
            return Err(StoreError::Unavailable(format!(
                "batch names {}/{} twice",
                k.pk, k.sk
            )));
        }
    }
    Ok(())
}

pub fn check_transaction(writes: &[TxWrite]) -> Result<(), StoreError> {
    if writes.len() > TRANSACTION_LIMIT {
        return Err(StoreError::Unavailable(format!(
            "transaction of {} writes exceeds {TRANSACTION_LIMIT}",
            writes.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for w in writes {
        let k = w.key();
        if matches!(w, TxWrite::Check(_, Condition::None)) {
            return Err(StoreError::Unavailable(format!(
                "transaction checks {}/{} without a condition",
                k.pk, k.sk
            )));
        }
        if !seen.insert(k) {
            return Err(StoreError::Unavailable(format!(
                "transaction names {}/{} twice",
                k.pk, k.sk
            )));
        }
    }
    Ok(())
}
