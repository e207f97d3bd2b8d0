//! Typed stores, written once over the [`Table`] port.
//!
//! Every adapter (SQLite, DynamoDB, memory) implements only the primitive; the meaning of a
//! failed condition (duplicate, conflict, not found), expiry, batching and key layout are
//! decided here, so the adapters cannot drift apart. The layout, one table keyed `pk`/`sk`:
//!
//! | record | pk | sk | gsi1 | gsi2 |
//! |---|---|---|---|---|
//! | API key | `KEY#<sha256>` | `KEY` | `CO#<c>` / `KEY#<id>` | |
//! | connection | `CO#<c>` | `CONN#<id>` | `CHAN#<channel id>` / `CONN` | `CONNS#<provider>` / `<c>#<id>` |
//! | staff's connection (copy) | `CO#<c>` | `STAFFCONN#<staff>#<provider>` | | |
//! | delta cursor | `CO#<c>` | `CURSOR#<connection>` | | |
//! | round progress | `CO#<c>` | `PROGRESS#<connection>` (ttl 7 d) | | |
//! | sync lease | `CO#<c>` | `LEASE#<connection>` (ttl) | | |
//! | Google sync checkpoint | `CO#<c>` | `GSYNCPROG#<connection>` (ttl 48 h) | | |
//! | mapping | `CO#<c>` | `MAP#<provider>#<session>` | | |
//! | credentials | `CO#<c>` | `CRED#<provider>` (secret sealed) | | |
//! | mapping by event (copy) | `CO#<c>` | `MAPX#<connection>#<event>` | | |
//! | override | `CO#<c>` | `OVR#<staff>#<connection>#<event>` (ttl: end + 1 d) | `CO#<c>#STAFFOVR#<staff>` / `S#<start>#<connection>#<event>` (`L#` when longer than 31 d) | |
//! | session | `CO#<c>` | `SESS#<id>` (ttl: end + 30 d) | `CO#<c>#STAFF#<staff>` / `SESS#<start>#<id>` | |
//! | session event sequence | `CO#<c>` | `SEQ#<session>` | | |
//! | availability settings | `CO#<c>` | `SETTINGS#availability` | | |
//! | request budget | `BUDGET#<scope>` | `W#<window start>` (ttl) | | |
//! | idempotency | `CO#<c>` | `IDEM#<scope>#<key>` (ttl) | | |
//! | webhook endpoint | `CO#<c>` | `WH#<id>` | | |
//! | delivery | `CO#<c>` | `DLV#<id>` (ttl 30 d) | `CO#<c>#WH#<endpoint>` / `DLV#<id>` | `DLVDUE` / `<due>#<c>#<id>` while pending; `CO#<c>#WH#<endpoint>#FAILED` / `<failed at>#<id>` once failed |
//! | endpoint rate slot | `CO#<c>` | `WHRATE#<endpoint>` (ttl 1 d) | | |
//! | delivery attempt | `CO#<c>` | `DLV#<id>#A#<n>` (ttl 30 d) | | |
//!
//! Copies are written in the same transaction as their primary, so the lookups they serve
//! (a staff member's connection, mappings by provider event id) are one consistent read.

mod budgets;
pub mod cache;
mod connections;
mod credentials;
mod cursors;
mod google_progress;
mod idempotency;
mod keys;
mod leases;
mod mappings;
mod outbound;
mod overrides;
mod sequences;
mod sessions;
mod settings;
mod webhooks;

pub use webhooks::DELIVERY_RETENTION_DAYS;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Serialize};

pub use google_progress::{GoogleSyncProgress, PROGRESS_TTL_HOURS};
pub use idempotency::Claim;
pub use leases::{Lease, LeaseClaim, Released, LEASE_TTL_SECONDS};
pub use outbound::{OutboundContext, OutboundWrite};
pub use sequences::SequenceState;

use crate::ports::{Clock, Item, Key, Page, StoreError, Table};
use crate::{Error, Result};

/// Largest page a list route may ask for.
pub const MAX_PAGE: usize = 100;

#[derive(Clone)]
pub struct Store {
    table: Arc<dyn Table>,
    clock: Arc<dyn Clock>,
    /// API keys and endpoint lists kept in memory: only where this process makes every
    /// change to them ([`Store::with_read_cache`]).
    cache: Option<Arc<cache::ReadCache>>,
}

/// One page of typed records.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

impl Store {
    pub fn new(table: Arc<dyn Table>, clock: Arc<dyn Clock>) -> Self {
        Store {
            table,
            clock,
            cache: None,
        }
    }

    /// A read the cache may answer: `hit` looks in it; on a miss `read` reads the table and
    /// `keep` keeps what it read, unless a change came meanwhile (the generation taken before
    /// the read). Without a cache, just the read.
    async fn read_through<T>(
        &self,
        hit: impl FnOnce(&cache::ReadCache) -> Option<T>,
        read: impl std::future::Future<Output = Result<T>>,
        keep: impl FnOnce(&cache::ReadCache, cache::Generation, &T),
    ) -> Result<T> {
        let Some(cache) = &self.cache else {
            return read.await;
        };
        if let Some(found) = hit(cache) {
            return Ok(found);
        }
        let read_at = cache.generation();
        let found = read.await?;
        keep(cache, read_at, &found);
        Ok(found)
    }

    /// Runs a write of a record the read cache may hold, then `forget`s its entry: after the
    /// commit, and to the end even when the caller stops waiting (a dropped request: the
    /// writer commits the write all the same, so the forgetting must follow it). Without a
    /// cache, just the write.
    async fn write_then_forget<F>(
        &self,
        write: F,
        forget: impl FnOnce(&cache::ReadCache) + Send + 'static,
    ) -> Result<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let Some(cache) = self.cache.clone() else {
            return Ok(write.await);
        };
        tokio::spawn(async move {
            let out = write.await;
            forget(&cache);
            out
        })
        .await
        .map_err(|e| Error::Internal(format!("a cached record's write stopped: {e}")))
    }

    /// This store, answering API keys and endpoint lists from memory once read (see
    /// [`cache`]): for a process that makes every change to them itself, through this store
    /// or its clones (the local system's `serve`).
    pub fn with_read_cache(mut self) -> Self {
        self.cache = Some(Arc::new(cache::ReadCache::new()));
        self
    }

    pub fn table(&self) -> &dyn Table {
        self.table.as_ref()
    }

    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Whether an item read from the table is still alive. DynamoDB removes expired items
    /// lazily (up to days later), so expiry is decided on read, identically for all adapters.
    fn live(&self, item: &Item) -> bool {
        item.expires_at
            .is_none_or(|t| t > self.clock.now().timestamp())
    }

    /// Every live record a query covers, reading page after page.
    async fn query_all<T: DeserializeOwned + Versioned>(
        &self,
        index: Option<crate::ports::Index>,
        mut query: crate::ports::Query,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        loop {
            let page = match index {
                Some(i) => self.table.query_index(i, query.clone()).await?,
                None => self.table.query(query.clone()).await?,
            };
            for item in page.items.iter().filter(|i| self.live(i)) {
                out.push(decode(item)?);
            }
            match page.next {
                Some(n) => query.cursor = Some(n),
                None => return Ok(out),
            }
        }
    }

    fn decode_page<T: DeserializeOwned + Versioned>(&self, page: Page) -> Result<Listed<T>> {
        let items = page
            .items
            .iter()
            .filter(|i| self.live(i))
            .map(decode)
            .collect::<Result<Vec<T>>>()?;
        Ok(Listed {
            items,
            next: page.next,
        })
    }
}

pub(crate) fn company_pk(company: &str) -> String {
    format!("CO#{company}")
}

/// Records whose stored version is authoritative for compare-and-set.
pub(crate) trait Versioned {
    fn set_version(&mut self, version: u64);
}

macro_rules! versioned {
    ($($t:ty),*) => {$(
        impl Versioned for $t {
            fn set_version(&mut self, version: u64) {
                self.version = version;
            }
        }
    )*};
}
versioned!(
    crate::model::WebhookEndpoint,
    crate::model::Delivery,
    crate::model::Connection,
    crate::model::DeltaCursor,
    crate::model::EventMapping,
    crate::model::Session,
    crate::model::CredentialRecord,
    budgets::BudgetWindow
);

macro_rules! unversioned {
    ($($t:ty),*) => {$(
        impl Versioned for $t {
            fn set_version(&mut self, _: u64) {}
        }
    )*};
}
unversioned!(
    crate::model::ApiKey,
    crate::model::Attempt,
    crate::model::AvailabilityOverride,
    crate::model::RoundProgress,
    crate::availability::AvailabilitySettings,
    idempotency::IdempotencyRecord
);

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Internal(format!("encode: {e}")))
}

pub(crate) fn decode<T: DeserializeOwned + Versioned>(item: &Item) -> Result<T> {
    let mut value: T = serde_json::from_str(&item.data).map_err(|e| {
        Error::from(StoreError::Corrupt(format!(
            "{}/{}: {e}",
            item.key.pk, item.key.sk
        )))
    })?;
    value.set_version(item.version);
    Ok(value)
}

/// After a failed versioned write: was the record gone, or changed by someone else?
pub(crate) async fn classify_cas_failure(
    table: &dyn Table,
    key: &Key,
    entity: &'static str,
    id: &str,
) -> Error {
    match table.get(key).await {
        Ok(None) => Error::not_found(entity, id),
        Ok(Some(_)) => Error::Conflict {
            entity,
            id: id.to_string(),
        },
        Err(e) => e.into(),
    }
}

pub(crate) fn validate_page_size(limit: Option<usize>) -> Result<usize> {
    match limit {
        None => Ok(50),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(Error::validation(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        )),
    }
}

/// Checks that a client-supplied cursor is one we issued for this listing (`q` read from
/// `index`), so a forged cursor, or one of another listing (another company's, another
/// endpoint's, another route's), is a 422 naming the field rather than a store error:
/// DynamoDB refuses a start key outside the query's partition or without the index's keys.
pub(crate) fn check_cursor(
    cursor: Option<&str>,
    q: &crate::ports::Query,
    index: Option<crate::ports::Index>,
) -> Result<Option<String>> {
    let Some(c) = cursor else {
        return Ok(None);
    };
    let of_this_listing = crate::ports::table::Resume::decode(c).is_some_and(|r| {
        let (pk, sk) = match index {
            None => (Some(&r.pk), Some(&r.sk)),
            Some(_) => (r.ipk.as_ref(), r.isk.as_ref()),
        };
        pk == Some(&q.pk) && sk.is_some_and(|sk| sk.starts_with(&q.prefix))
    });
    if of_this_listing {
        Ok(Some(c.to_string()))
    } else {
        Err(Error::validation(
            "cursor",
            "is not a cursor this API issued for this listing",
        ))
    }
}
