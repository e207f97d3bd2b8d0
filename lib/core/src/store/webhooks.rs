//! Webhook endpoints, deliveries and their attempts, the sweep's due index, the failed-delivery
//! index that bulk recovery reads, and rate-limit slots.

use chrono::{DateTime, Utc};

use super::{
    check_cursor, classify_cas_failure, company_pk, decode, encode, validate_page_size, Listed,
    Store,
};
use crate::model::{Attempt, Delivery, DeliveryStatus, WebhookEndpoint};
use crate::ports::table::{BATCH_WRITE_LIMIT, TRANSACTION_LIMIT};
use crate::ports::{Condition, Index, Item, Key, Query, StoreError, TxWrite};
use crate::{Error, Result};

/// Most pages [`Store::list_deliveries`] reads to fill one page filtered by status.
pub const FILTERED_PAGES: usize = 10;

/// Deliveries and their attempts are kept this long (then expire through TTL).
pub const DELIVERY_RETENTION_DAYS: i64 = 30;

/// Most bytes of delivery records one transaction carries (DynamoDB refuses a transaction
/// of more than 4 MB).
const TRANSACTION_BYTES: usize = 3 * 1024 * 1024;

fn endpoint_key(company: &str, id: &str) -> Key {
    Key::new(company_pk(company), format!("WH#{id}"))
}

fn delivery_key(company: &str, id: &str) -> Key {
    Key::new(company_pk(company), format!("DLV#{id}"))
}

fn attempt_key(company: &str, delivery: &str, number: u32) -> Key {
    Key::new(company_pk(company), format!("DLV#{delivery}#A#{number:03}"))
}

/// The sweep index: only pending deliveries are in it, ordered by due time.
const DUE_PK: &str = "DLVDUE";

fn due_sk(at: DateTime<Utc>, company: &str, id: &str) -> String {
    format!("{}#{company}#{id}", at.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
}

/// The failed-delivery index of one endpoint (gsi2 of a failed delivery, which is no longer
/// in the due index): ordered by when the delivery failed, so recovery reads a time window.
fn failed_pk(company: &str, endpoint: &str) -> String {
    format!("CO#{company}#WH#{endpoint}#FAILED")
}

fn failed_sk(at: DateTime<Utc>, id: &str) -> String {
    format!("{}#{id}", at.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
}

fn rate_key(company: &str, endpoint: &str) -> Key {
    Key::new(company_pk(company), format!("WHRATE#{endpoint}"))
}

/// An endpoint's rate-limit state: the earliest time the next attempt may be sent.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RateSlot {
    /// Microseconds since the Unix epoch.
    next_free_us: i64,
}

fn delivery_item(d: &Delivery, version: u64) -> Result<Item> {
    let mut item = Item::new(delivery_key(&d.company_id, &d.id), encode(d)?);
    item.version = version;
    // The endpoint's log, by when each delivery was made (a recovered copy's id is derived
    // from its original, not from the time, so the id alone would not order it): the time
    // part of an id made then, in the form of the ids the key held before (`DLV#dlv_<ulid>`),
    // so records written before this key sort among the new ones by time.
    item.gsi1 = Some(Key::new(
        format!("CO#{}#WH#{}", d.company_id, d.endpoint_id),
        format!("DLV#dlv_{}#{}", crate::ids::time_part(d.created_at), d.id),
    ));
    match d.status {
        DeliveryStatus::Pending => {
            if let Some(at) = d.next_attempt_at {
                item.gsi2 = Some(Key::new(DUE_PK, due_sk(at, &d.company_id, &d.id)));
            }
        }
        // A finished delivery's last change is when it failed.
        DeliveryStatus::Failed => {
            item.gsi2 = Some(Key::new(
                failed_pk(&d.company_id, &d.endpoint_id),
                failed_sk(d.updated_at, &d.id),
            ));
        }
        DeliveryStatus::Succeeded => {}
    }
    item.expires_at =
        Some((d.created_at + chrono::Duration::days(DELIVERY_RETENTION_DAYS)).timestamp());
    Ok(item)
}

impl Store {
    pub async fn create_endpoint(&self, e: &WebhookEndpoint) -> Result<WebhookEndpoint> {
        let mut e = e.clone();
        e.version = 1;
        let mut item = Item::new(endpoint_key(&e.company_id, &e.id), encode(&e)?);
        item.version = 1;
        let put = self
            .put_endpoint(item, Condition::NotExists, &e.company_id)
            .await?;
        match put {
            Ok(()) => Ok(e),
            Err(StoreError::ConditionFailed) => Err(Error::Duplicate {
                entity: "webhook endpoint",
                id: e.id.clone(),
            }),
            Err(err) => Err(err.into()),
        }
    }

    pub async fn get_endpoint(&self, company: &str, id: &str) -> Result<WebhookEndpoint> {
        match self.table.get(&endpoint_key(company, id)).await? {
            Some(item) => decode(&item),
            None => Err(Error::not_found("webhook endpoint", id)),
        }
    }

    /// The endpoint, or `None` when it was deleted.
    pub async fn find_endpoint(&self, company: &str, id: &str) -> Result<Option<WebhookEndpoint>> {
        match self.get_endpoint(company, id).await {
            Ok(e) => Ok(Some(e)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Compare-and-set on `e.version`; on success `e.version` is the new version.
    pub async fn update_endpoint(&self, e: &mut WebhookEndpoint) -> Result<()> {
        let expected = e.version;
        let mut next = e.clone();
        next.version = expected + 1;
        next.updated_at = self.now();
        let mut item = Item::new(endpoint_key(&e.company_id, &e.id), encode(&next)?);
        item.version = next.version;
        let key = item.key.clone();
        let put = self
            .put_endpoint(item, Condition::Version(expected), &e.company_id)
            .await?;
        match put {
            Ok(()) => {
                *e = next;
                Ok(())
            }
            Err(StoreError::ConditionFailed) => {
                Err(classify_cas_failure(self.table(), &key, "webhook endpoint", &e.id).await)
            }
            Err(err) => Err(err.into()),
        }
    }

    pub async fn delete_endpoint(&self, company: &str, id: &str) -> Result<()> {
        let table = self.table.clone();
        let key = endpoint_key(company, id);
        let owner = company.to_string();
        let deleted = self
            .write_then_forget(
                async move { table.delete(&key, Condition::Exists).await },
                move |cache| cache.forget_endpoints(&owner),
            )
            .await?;
        match deleted {
            Ok(()) => Ok(()),
            Err(StoreError::ConditionFailed) => Err(Error::not_found("webhook endpoint", id)),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn list_endpoints(
        &self,
        company: &str,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<Listed<WebhookEndpoint>> {
        let mut q = Query::prefix(company_pk(company), "WH#", validate_page_size(limit)?);
        q.cursor = check_cursor(cursor, &q, None)?;
        let page = self.table.query(q).await?;
        self.decode_page(page)
    }

    /// Every endpoint of a company, for fan-out (from memory where the store caches them).
    pub async fn all_endpoints(&self, company: &str) -> Result<Vec<WebhookEndpoint>> {
        self.read_through(
            |cache| cache.endpoints(company),
            self.query_all(None, Query::prefix(company_pk(company), "WH#", 100)),
            |cache, read_at, list| cache.keep_endpoints(read_at, company, list),
        )
        .await
    }

    /// Writes an endpoint's item; the company's cached list is forgotten after the commit.
    async fn put_endpoint(
        &self,
        item: Item,
        condition: Condition,
        company: &str,
    ) -> Result<std::result::Result<(), StoreError>> {
        let table = self.table.clone();
        let owner = company.to_string();
        self.write_then_forget(
            async move { table.put(item, condition).await },
            move |cache| cache.forget_endpoints(&owner),
        )
        .await
    }

    /// Stores new deliveries, 25 per batch write.
    pub async fn create_deliveries(&self, deliveries: &[Delivery]) -> Result<()> {
        let mut items = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            items.push(delivery_item(d, 1)?);
        }
        for chunk in items.chunks(BATCH_WRITE_LIMIT) {
            self.table.batch_write(chunk.to_vec(), vec![]).await?;
        }
        Ok(())
    }

    /// Stores new deliveries in one transaction with `with` (conditional writes, such as the
    /// compare-and-set of a session's sequence counter): one commit, all or nothing.
    /// `Ok(false)`: a condition failed and nothing was written. Deliveries that do not fit
    /// in the transaction (more than [`TRANSACTION_LIMIT`] writes or [`TRANSACTION_BYTES`]
    /// of records) are written after it, in batch writes, as [`Store::create_deliveries`]
    /// writes them all.
    pub async fn create_deliveries_with(
        &self,
        deliveries: &[Delivery],
        with: Vec<TxWrite>,
    ) -> Result<bool> {
        if with.is_empty() {
            self.create_deliveries(deliveries).await?;
            return Ok(true);
        }
        let mut writes = with;
        let mut bytes = 0;
        let mut rest = deliveries;
        while let Some((d, more)) = rest.split_first() {
            let item = delivery_item(d, 1)?;
            bytes += item.data.len();
            if writes.len() >= TRANSACTION_LIMIT || bytes > TRANSACTION_BYTES {
                break;
            }
            writes.push(TxWrite::Put(item, Condition::None));
            rest = more;
        }
        match self.table.transact(writes).await {
            Ok(()) => {}
            Err(StoreError::ConditionFailed) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        self.create_deliveries(rest).await?;
        Ok(true)
    }

    /// Stores those of `deliveries` that do not exist yet (by id) and answers them: the
    /// copies a recover makes, whose ids derive from their originals, so two recovers of one
    /// window at once make each copy once, and each call counts and wakes only its own. A
    /// transaction of conditional puts per chunk; a chunk where one exists already is put
    /// one by one.
    pub async fn create_new_deliveries(&self, deliveries: &[Delivery]) -> Result<Vec<Delivery>> {
        let mut created = Vec::with_capacity(deliveries.len());
        let mut rest = deliveries;
        while !rest.is_empty() {
            let (mut n, mut bytes, mut writes) = (0, 0, Vec::new());
            for d in rest {
                let item = delivery_item(d, 1)?;
                bytes += item.data.len();
                if n > 0 && (n >= TRANSACTION_LIMIT || bytes > TRANSACTION_BYTES) {
                    break;
                }
                writes.push(TxWrite::Put(item, Condition::NotExists));
                n += 1;
            }
            let (chunk, more) = rest.split_at(n);
            match self.table.transact(writes).await {
                Ok(()) => created.extend_from_slice(chunk),
                Err(StoreError::ConditionFailed) => {
                    for d in chunk {
                        match self
                            .table
                            .put(delivery_item(d, 1)?, Condition::NotExists)
                            .await
                        {
                            Ok(()) => created.push(d.clone()),
                            Err(StoreError::ConditionFailed) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
            rest = more;
        }
        Ok(created)
    }

    /// Which of `ids` name deliveries that exist (batched reads).
    pub async fn existing_deliveries(
        &self,
        company: &str,
        ids: &[String],
    ) -> Result<std::collections::HashSet<String>> {
        let keys: Vec<Key> = ids.iter().map(|id| delivery_key(company, id)).collect();
        let mut found = std::collections::HashSet::new();
        for chunk in keys.chunks(crate::ports::table::BATCH_GET_LIMIT) {
            for item in self.table.batch_get(chunk).await? {
                if let Some(id) = item.key.sk.strip_prefix("DLV#") {
                    found.insert(id.to_string());
                }
            }
        }
        Ok(found)
    }

    pub async fn get_delivery(&self, company: &str, id: &str) -> Result<Delivery> {
        match self.table.get(&delivery_key(company, id)).await? {
            Some(item) if self.live(&item) => decode(&item),
            _ => Err(Error::not_found("delivery", id)),
        }
    }

    /// A delivery with its attempts, in one query.
    pub async fn delivery_with_attempts(
        &self,
        company: &str,
        id: &str,
    ) -> Result<(Delivery, Vec<Attempt>)> {
        let q = Query::prefix(company_pk(company), format!("DLV#{id}"), 100);
        let page = self.table.query(q).await?;
        let mut delivery = None;
        let mut attempts = Vec::new();
        for item in page.items.iter().filter(|i| self.live(i)) {
            if item.key.sk == format!("DLV#{id}") {
                delivery = Some(decode::<Delivery>(item)?);
            } else if item.key.sk.starts_with(&format!("DLV#{id}#A#")) {
                attempts.push(decode::<Attempt>(item)?);
            }
        }
        let delivery = delivery.ok_or_else(|| Error::not_found("delivery", id))?;
        attempts.sort_by_key(|a| a.number);
        Ok((delivery, attempts))
    }

    /// Compare-and-set on `d.version`, writing `attempt` (if any) in the same transaction.
    pub async fn update_delivery(&self, d: &mut Delivery, attempt: Option<&Attempt>) -> Result<()> {
        let expected = d.version;
        let mut next = d.clone();
        next.version = expected + 1;
        next.updated_at = self.now();
        let item = delivery_item(&next, next.version)?;
        let key = item.key.clone();
        let mut writes = vec![TxWrite::Put(item, Condition::Version(expected))];
        if let Some(a) = attempt {
            let mut ai = Item::new(attempt_key(&d.company_id, &d.id, a.number), encode(a)?);
            ai.expires_at =
                Some((d.created_at + chrono::Duration::days(DELIVERY_RETENTION_DAYS)).timestamp());
            writes.push(TxWrite::Put(ai, Condition::None));
        }
        match self.table.transact(writes).await {
            Ok(()) => {
                *d = next;
                Ok(())
            }
            Err(StoreError::ConditionFailed) => {
                Err(classify_cas_failure(self.table(), &key, "delivery", &d.id).await)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// An endpoint's deliveries, newest first, optionally only those in `status`. With a
    /// status, pages of the endpoint's deliveries are read until `limit` of them match or
    /// [`FILTERED_PAGES`] pages were read (a page may then hold fewer, even none, with the
    /// cursor of where the reading stopped); the cursor resumes right after the last one
    /// listed.
    pub async fn list_deliveries(
        &self,
        company: &str,
        endpoint: &str,
        status: Option<DeliveryStatus>,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<Listed<Delivery>> {
        let limit = validate_page_size(limit)?;
        let query = |cursor: Option<String>| {
            let mut q = Query::prefix(format!("CO#{company}#WH#{endpoint}"), "DLV#", limit);
            q.cursor = cursor;
            q.descending = true;
            q
        };
        let mut cursor = check_cursor(cursor, &query(None), Some(Index::Gsi1))?;
        let Some(status) = status else {
            let page = self.table.query_index(Index::Gsi1, query(cursor)).await?;
            return self.decode_page(page);
        };
        let mut items = Vec::new();
        for _ in 0..FILTERED_PAGES {
            let page = self
                .table
                .query_index(Index::Gsi1, query(cursor.take()))
                .await?;
            let live: Vec<&crate::ports::Item> =
                page.items.iter().filter(|i| self.live(i)).collect();
            for (n, item) in live.iter().enumerate() {
                let d: Delivery = decode(item)?;
                if d.status != status {
                    continue;
                }
                items.push(d);
                if items.len() == limit {
                    // Resumed right after this one; no cursor when nothing follows it.
                    let more = n + 1 < live.len() || page.next.is_some();
                    let after = crate::ports::table::Resume::of(item, Some(Index::Gsi1));
                    return Ok(Listed {
                        items,
                        next: more.then(|| after.encode()),
                    });
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(Listed { items, next: None }),
            }
        }
        Ok(Listed {
            items,
            next: cursor,
        })
    }

    /// Pending deliveries due at or before `until`, across companies, oldest due first.
    pub async fn due_deliveries(
        &self,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Delivery>> {
        let mut q = Query::prefix(DUE_PK, "", limit.max(1));
        q.upper = Some(format!("{}~", until.format("%Y-%m-%dT%H:%M:%S%.3fZ")));
        let page = self.table.query_index(Index::Gsi2, q).await?;
        // The index may lag: confirm each against its record, in one batch read.
        let keys: Vec<Key> = page.items.into_iter().map(|i| i.key).collect();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(crate::ports::table::BATCH_GET_LIMIT) {
            for fresh in self.table.batch_get(chunk).await? {
                let d: Delivery = decode(&fresh)?;
                if d.status == DeliveryStatus::Pending
                    && d.next_attempt_at.is_some_and(|t| t <= until)
                {
                    out.push(d);
                }
            }
        }
        out.sort_by_key(|d| d.next_attempt_at);
        Ok(out)
    }

    /// One page of an endpoint's deliveries that failed in `[since, until)`, newest failure
    /// first, read from the failed-delivery index (bounded: `limit` index entries per call,
    /// then a batch read of their records). Answers the deliveries (confirmed failed against
    /// their records) and the cursor of the next page.
    pub async fn failed_deliveries(
        &self,
        company: &str,
        endpoint: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<Delivery>, Option<String>)> {
        // `upper` is inclusive: one millisecond before `until` keeps the window half-open.
        let last = until - chrono::Duration::milliseconds(1);
        let mut q = Query::prefix(failed_pk(company, endpoint), "", limit.max(1));
        q.upper = Some(format!("{}~", last.format("%Y-%m-%dT%H:%M:%S%.3fZ")));
        q.descending = true;
        q.cursor = cursor;
        let page = self.table.query_index(Index::Gsi2, q).await?;
        let floor = failed_sk(since, "");
        let mut keys = Vec::with_capacity(page.items.len());
        let mut past_window = false;
        for item in &page.items {
            match &item.gsi2 {
                Some(k) if k.sk >= floor => keys.push(item.key.clone()),
                _ => past_window = true,
            }
        }
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(crate::ports::table::BATCH_GET_LIMIT) {
            for fresh in self.table.batch_get(chunk).await? {
                if !self.live(&fresh) {
                    continue;
                }
                let d: Delivery = decode(&fresh)?;
                if d.status == DeliveryStatus::Failed
                    && d.endpoint_id == endpoint
                    && d.updated_at >= since
                    && d.updated_at < until
                {
                    out.push(d);
                }
            }
        }
        out.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(b.id.cmp(&a.id)));
        let next = if past_window { None } else { page.next };
        Ok((out, next))
    }

    /// Reserves the next send time under an endpoint's rate limit of `per_second`: the later
    /// of `now` and the endpoint's next free slot, which moves on by `1 / per_second`.
    /// A compare-and-set on the slot record, retried on a lost race.
    pub async fn reserve_rate_slot(
        &self,
        company: &str,
        endpoint: &str,
        per_second: u32,
    ) -> Result<DateTime<Utc>> {
        let key = rate_key(company, endpoint);
        let spacing_us = 1_000_000 / i64::from(per_second.max(1));
        for _ in 0..50 {
            let now_us = self.now().timestamp_micros();
            let current = self.table.get(&key).await?;
            let (free_us, condition) = match &current {
                Some(item) => {
                    let slot: RateSlot = serde_json::from_str(&item.data)
                        .map_err(|e| Error::Internal(format!("rate slot: {e}")))?;
                    (slot.next_free_us, Condition::Version(item.version))
                }
                None => (0, Condition::NotExists),
            };
            let at_us = free_us.max(now_us);
            let next = RateSlot {
                next_free_us: at_us + spacing_us,
            };
            let data = serde_json::to_string(&next)
                .map_err(|e| Error::Internal(format!("rate slot: {e}")))?;
            let mut item = Item::new(key.clone(), data);
            item.version = current.as_ref().map_or(1, |i| i.version + 1);
            // Forgotten a day after its last use.
            item.expires_at = Some(self.now().timestamp() + 86_400);
            match self.table.put(item, condition).await {
                Ok(()) => {
                    return DateTime::from_timestamp_micros(at_us)
                        .ok_or_else(|| Error::Internal("rate slot out of range".into()))
                }
                Err(StoreError::ConditionFailed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Unavailable(format!(
            "rate slot of endpoint {endpoint} kept changing"
        )))
    }
}
